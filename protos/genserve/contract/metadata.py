"""Request-metadata keys, defined once for the server, the bridge and the SDK."""

REQUEST_ID = "x-request-id"  # taken from the caller when present, else generated
AUTHORIZATION = "authorization"  # "Bearer <key>"
# Trailing metadata of a refusal that may be retried: whole seconds to wait first, and
# the same wait in milliseconds, exact, for the SDK.
RETRY_AFTER = "retry-after"
RETRY_AFTER_MS = "retry-after-ms"
