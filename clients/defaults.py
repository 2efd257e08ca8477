"""The SDK's defaults, as named constants. Per-call deadlines are each spec's
`sdk_timeout_s` (generation on a CPU is slow; a hung call is slower)."""

from __future__ import annotations

DEFAULT_TARGET = "localhost:50051"

HEALTH_TIMEOUT_S = 5.0
MODEL_LOAD_TIMEOUT_S = 600.0  # LoadModel returns once the weights are in memory

# Retries: UNAVAILABLE only (the server restarting or not up yet), and only before any
# output arrived, so a retried call never repeats part of an answer.
MAX_RETRIES = 3
RETRY_BACKOFF_S = 0.5  # doubled each attempt
RETRY_BACKOFF_MAX_S = 8.0
# RESOURCE_EXHAUSTED (a full queue, a key over its budget) is retried after the server's
# retry-after when that is no longer than this; a longer wait is the caller's to decide.
MAX_RETRY_AFTER_S = 30.0

MAX_MESSAGE_MB = 32  # uploads (video's image, transcription's audio) travel in one message
