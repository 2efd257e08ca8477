"""Text-to-speech with piper: VITS voices on onnxruntime, espeak-ng's phonemes.

The WAV streams as it is spoken: its header first, with the streaming placeholder for the
sizes (the length is not known yet), then the samples of each sentence as soon as piper
has synthesized it, so a caller hears the first sentence while the next is computed.
The voices are the `.onnx` files (each with its `.onnx.json`) in the model's source
folder, named by their file names; the request's `preset` picks one, `speed` divides the
voice's length_scale and `sample_rate` resamples.

piper-tts is GPL-3.0-or-later: the optional `speech` extra, imported only here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from genserve.contract.events import MediaEvent
from genserve.contract.modalities.audio import AudioParams
from genserve.server.engine.serial import Job, SerialEngine
from genserve.server.errors import InvalidArgument
from genserve.server.manifest import ModelSpec
from genserve.server.media.run import MediaRun
from genserve.server.media.wav_stream import Pcm16Resampler, streamed_wav_header
from genserve.server.settings import Settings
from genserve.server.upstream.media_stream import header_for

logger = logging.getLogger(__name__)

PiperEngine: TypeAlias = SerialEngine[AudioParams, MediaEvent]

VOICE_SUFFIX = ".onnx"
CONFIG_SUFFIX = ".onnx.json"
STAGE = "speak"  # the progress events' stage: one step per sentence


@dataclass(frozen=True)
class Voices:
    """The model's voices by name (piper's PiperVoice objects)."""

    by_name: Mapping[str, Any]

    def get(self, model: str, name: str) -> Any:
        voice = self.by_name.get(name)
        if voice is None:
            raise InvalidArgument(
                "preset", f"model {model} has the voices {', '.join(self.by_name)}, got {name!r}"
            )
        return voice


def find_voices(folder: Path) -> dict[str, Path]:
    """Voice name -> its .onnx file, for each one that has its config beside it."""
    return {
        path.name.removesuffix(VOICE_SUFFIX): path
        for path in sorted(folder.glob(f"*{VOICE_SUFFIX}"))
        if path.with_name(path.name.removesuffix(VOICE_SUFFIX) + CONFIG_SUFFIX).is_file()
    }


def load_voice(path: Path, threads: int, use_cuda: bool) -> Any:
    """A PiperVoice with a session of our own making: the manifest's thread count (0:
    onnxruntime's default, every core) and CUDA only where asked and present."""
    import onnxruntime
    from piper import PiperConfig, PiperVoice

    config_path = path.with_name(path.name.removesuffix(VOICE_SUFFIX) + CONFIG_SUFFIX)
    config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if use_cuda and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
    return PiperVoice(session=session, config=config)


def speak(voice: Any, params: AudioParams, run: MediaRun) -> None:
    """One request: header, then per sentence a progress event and its samples (flushed as
    a chunk of their own), then the final event. Text with nothing to pronounce (symbols
    espeak-ng has no sound for) is a WAV with no samples."""
    from piper import SynthesisConfig

    native = int(voice.config.sample_rate)
    rate = params.sample_rate or native
    sentences = sum(1 for phonemes in voice.phonemize(params.prompt) if phonemes)
    head = streamed_wav_header(rate)
    run.header(header_for(head, f"speech-{params.seed}", "audio/wav"))
    run.output.write(head)
    resampler = Pcm16Resampler(native, rate) if rate != native else None
    config = SynthesisConfig(length_scale=voice.config.length_scale / params.speed)
    for step, chunk in enumerate(voice.synthesize(params.prompt, config), start=1):
        pcm = chunk.audio_int16_bytes
        run.progress(step, sentences, STAGE)
        run.output.write(resampler.feed(pcm) if resampler is not None else pcm)
        run.output.flush_remainder()  # this sentence leaves now, whatever the chunk size
    if resampler is not None:
        run.output.write(resampler.flush())
    run.inference_done()
    run.finish()


def load_piper_engine(spec: ModelSpec, settings: Settings) -> PiperEngine:
    folder = Path(spec.resolved_source(settings.model_store))
    paths = find_voices(folder)
    if not paths:
        raise FileNotFoundError(
            f"model {spec.name}: no piper voice (*.onnx + *.onnx.json) in {folder}"
        )
    default = spec.defaults.get("preset")
    if default not in paths:
        raise ValueError(
            f"model {spec.name}: [audio.defaults] preset must name one of its voices "
            f"({', '.join(paths)}), got {default!r}"
        )
    use_cuda = spec.device == "cuda"
    logger.info("loading %s: piper voices %s from %s", spec.name, ", ".join(paths), folder)
    voices = Voices(
        {name: load_voice(path, spec.threads, use_cuda) for name, path in paths.items()}
    )
    chunk_size = settings.media.chunk_size

    def work(params: AudioParams, job: Job[MediaEvent]) -> None:
        voice = voices.get(spec.name, params.preset)
        speak(voice, params, MediaRun(job, chunk_size, params.seed))

    return SerialEngine(
        spec.name,
        work,
        max_queue=settings.media.max_queue,
        memory_bytes=sum(path.stat().st_size for path in paths.values()),
    )
