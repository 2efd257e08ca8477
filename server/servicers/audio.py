"""AudioService requests: protobuf in, validated AudioParams out (Bark, streamed as WAV)."""

from __future__ import annotations

from genserve.server.errors import InvalidArgument
from genserve.server.media.audio import AudioDefaults, AudioParams
from genserve.server.servicers.validation import check_prompt, optional, seed_of
from genserve.server.settings import Settings
from genserve.v1 import audio_pb2


def audio_params_from_pb(
    request: audio_pb2.AudioGenerateRequest, defaults: AudioDefaults, settings: Settings
) -> AudioParams:
    prompt = check_prompt("prompt", request.prompt, settings.audio.max_prompt_chars)
    preset = optional(request, "preset", defaults.preset)
    allowed = settings.audio.voice_presets
    if preset not in allowed:
        raise InvalidArgument("preset", f"must be one of {', '.join(allowed)}, got {preset!r}")
    return AudioParams(prompt=prompt, preset=preset, seed=seed_of(request))
