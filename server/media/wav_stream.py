"""A WAV written while it is spoken: the header goes out before the length is known, with
the streaming placeholder for its sizes, and the samples follow in pieces, resampled on
the way when the caller asked for another rate.

The placeholder is 0xFFFFFFFF for both the RIFF and the data size: what the upstream
adapter reads as "written while streaming" (media_stream.STREAMED_WAV_BYTES and up) and
the transcription hook accepts (UNKNOWN_RIFF_SIZES); libsndfile and FFmpeg read such a
file to its end.
"""

from __future__ import annotations

import struct

import av
import numpy as np

from genserve.server.media.transcription import UNKNOWN_RIFF_SIZES
from genserve.server.provenance.current import current_record
from genserve.server.provenance.wav import info_chunk
from genserve.server.upstream.media_stream import STREAMED_WAV_BYTES

STREAMED_SIZE = 0xFFFFFFFF
assert STREAMED_SIZE in UNKNOWN_RIFF_SIZES and STREAMED_SIZE >= STREAMED_WAV_BYTES
PCM = 1  # WAVE_FORMAT_PCM
SAMPLE_BYTES = 2  # 16-bit
CHANNELS = 1


def streamed_wav_header(sample_rate: int) -> bytes:
    """The header of a 16-bit mono PCM WAV whose length is not known yet: 44 bytes, and
    the running request's generation record (a LIST chunk) before its data chunk."""
    block = CHANNELS * SAMPLE_BYTES
    fmt = struct.pack(
        "<4sI4s4sIHHIIHH",
        b"RIFF",
        STREAMED_SIZE,
        b"WAVE",
        b"fmt ",
        16,
        PCM,
        CHANNELS,
        sample_rate,
        sample_rate * block,
        block,
        SAMPLE_BYTES * 8,
    )
    return fmt + info_chunk(current_record()) + struct.pack("<4sI", b"data", STREAMED_SIZE)


class Pcm16Resampler:
    """16-bit mono PCM from one rate to another, piece by piece (the filter's state is kept
    between pieces, so sentence boundaries leave no clicks); `flush` gives what it holds."""

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self._from_rate = from_rate
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=to_rate)

    def feed(self, pcm: bytes) -> bytes:
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self._from_rate
        return self._converted(frame)

    def flush(self) -> bytes:
        return self._converted(None)

    def _converted(self, frame: av.AudioFrame | None) -> bytes:
        out = self._resampler.resample(frame)
        return b"".join(piece.to_ndarray().astype("<i2").tobytes() for piece in out)
