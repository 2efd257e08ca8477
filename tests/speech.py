"""Real speech for the transcription tests: espeak-ng reads a fixed sentence into a WAV,
soundfile and PyAV re-encode it (FLAC, OGG, MP3) without ffmpeg, and jiwer scores what
Whisper heard."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import av
import jiwer
import numpy as np
import soundfile

# Words Whisper tiny.en gets right from espeak-ng's voice (numbers and names are spelled
# in ways a word error rate would count against it).
SENTENCE = (
    "Good morning. This is a short test of the speech recognition service. Thank you for listening."
)
ESPEAK = shutil.which("espeak-ng")
WRITE_BLOCK = 32768  # frames per soundfile write
ESPEAK_MISSING = "espeak-ng is not installed (make system-deps installs it with apt-get)"

_NORMALISE = jiwer.Compose(
    [
        jiwer.ToLowerCase(),
        jiwer.RemovePunctuation(),
        jiwer.RemoveMultipleSpaces(),
        jiwer.Strip(),
        jiwer.ReduceToListOfListOfWords(),
    ]
)


def speak(text: str, path: Path) -> bytes:
    """espeak-ng's WAV of the text (16-bit mono, 22050 Hz), also written to path."""
    assert ESPEAK is not None, ESPEAK_MISSING
    subprocess.run([ESPEAK, "-v", "en", "-s", "160", "-w", str(path), text], check=True, timeout=60)
    return path.read_bytes()


def decode(data: bytes) -> tuple[np.ndarray, int]:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    return samples, int(rate)


def duration_s(data: bytes) -> float:
    samples, rate = decode(data)
    return len(samples) / rate


def repeated(samples: np.ndarray, rate: int, seconds: float, gap_s: float = 0.5) -> np.ndarray:
    """The samples again and again, a short silence between, until `seconds` long."""
    gap = np.zeros(int(gap_s * rate), dtype=samples.dtype)
    one = np.concatenate([samples, gap])
    times = int(np.ceil(seconds * rate / len(one)))
    return np.tile(one, times)


def encode(samples: np.ndarray, rate: int, file_format: str) -> bytes:
    """WAV, FLAC or OGG (Vorbis) through soundfile; MP3 through PyAV's bundled LAME."""
    if file_format == "MP3":
        return _mp3(samples, rate)
    buffer = io.BytesIO()
    subtype = "PCM_16" if file_format == "WAV" else None
    with soundfile.SoundFile(buffer, "w", rate, 1, subtype, format=file_format) as out:
        # In blocks: libsndfile 1.2's Vorbis encoder crashes on one long write.
        for start in range(0, len(samples), WRITE_BLOCK):
            out.write(samples[start : start + WRITE_BLOCK])
    return buffer.getvalue()


def _mp3(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)[None, :]
    with av.open(buffer, "w", format="mp3") as container:
        stream = container.add_stream("mp3", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in (*stream.encode(frame), *stream.encode(None)):
            container.mux(packet)
    return buffer.getvalue()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER with case and punctuation ignored."""
    return float(
        jiwer.wer(
            reference,
            hypothesis,
            reference_transform=_NORMALISE,
            hypothesis_transform=_NORMALISE,
        )
    )
