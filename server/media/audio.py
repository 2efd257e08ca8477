"""Text-to-speech / text-to-audio with Bark, written as a 16-bit PCM WAV."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile
import torch

from genserve.contract.events import Header
from genserve.contract.modalities.audio import AudioParams
from genserve.server.engine.rng import seeded_global_generator
from genserve.server.errors import InvalidArgument
from genserve.server.media.run import MediaRun
from genserve.server.media.wav_stream import Pcm16Resampler
from genserve.server.provenance.wav import with_info


@dataclass
class BarkBundle:
    processor: Any
    model: Any


def check_bark_params(bundle: BarkBundle, params: AudioParams) -> None:
    """Bark speaks at its own pace, in the voices its processor holds."""
    if params.speed != 1.0:
        raise InvalidArgument("speed", f"Bark speaks at one rate, 1.0; got {params.speed}")
    presets = set(getattr(bundle.processor, "speaker_embeddings", None) or ()) - {"repo_or_path"}
    if presets and params.preset not in presets:
        raise InvalidArgument(
            "preset", f"Bark has the presets {', '.join(sorted(presets))}, got {params.preset!r}"
        )


def resampled(samples: np.ndarray, rate: int, to_rate: int) -> tuple[np.ndarray, int]:
    """The waveform at the rate the caller asked for, as 16-bit samples."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    resampler = Pcm16Resampler(rate, to_rate)
    return np.frombuffer(resampler.feed(pcm.tobytes()) + resampler.flush(), dtype="<i2"), to_rate


def generate_audio(bundle: BarkBundle, params: AudioParams, run: MediaRun) -> None:
    check_bark_params(bundle, params)
    device = bundle.model.device
    inputs = bundle.processor(params.prompt, voice_preset=params.preset)
    inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
    sample_rate = int(bundle.model.generation_config.sample_rate)
    # Bark draws from torch's global generator (it takes none of its own).
    with seeded_global_generator(params.seed), torch.inference_mode():
        # Bark runs its three stages inside one generate() call: progress is per call.
        waveform = bundle.model.generate(**inputs, do_sample=True)
    run.inference_done()
    samples: np.ndarray = waveform[0].float().cpu().numpy().astype(np.float32)
    if params.sample_rate and params.sample_rate != sample_rate:
        samples, sample_rate = resampled(samples, sample_rate, params.sample_rate)
    # Bark has no steps to report as they happen, so the header (with the duration, known
    # only now) comes first and its one progress event after it, as common.proto orders.
    run.header(
        Header(
            mime_type="audio/wav",
            file_name=f"audio-{params.seed}.wav",
            sample_rate=sample_rate,
            duration_s=len(samples) / sample_rate,
        )
    )
    run.progress(1, 1, "generate")
    encoded = io.BytesIO()
    soundfile.write(encoded, samples, sample_rate, format="WAV", subtype="PCM_16")
    run.output.write_all(with_info(encoded.getvalue(), run.record))
    run.finish()
