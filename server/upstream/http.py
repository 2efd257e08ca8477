"""The hop to an upstream server: one pooled HTTP client, timeouts, retries, status mapping.

What proxies' users ask for most, done once for every upstream kind:
- Separate connect, first-byte and idle limits, each capped by the caller's deadline.
- Retries only before the first byte (a retried stream would repeat text the caller
  already has), with full jitter, honouring Retry-After; never past the deadline.
- The upstream's status mapped to ours before the first byte; after it, any failure ends
  the stream with UNAVAILABLE or DEADLINE_EXCEEDED, never a truncated OK.
- Our own key goes upstream, never the caller's; the request ID goes with it.
- Closing the stream (the caller cancelled) closes the connection at once.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from genserve.contract import metadata
from genserve.server.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServingError,
    Unavailable,
)
from genserve.server.request_context import (
    REQUEST_ID_METADATA_KEY,
    current_call_details,
    current_request_id,
    seconds_left,
)
from genserve.server.upstream.spec import UpstreamSpec

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_ERROR_BODY_BYTES = 4096  # what we read of an error reply, to quote its message
MAX_QUOTED_CHARS = 200
MAX_RETRY_AFTER_S = 86400.0


@dataclass(frozen=True)
class Reply:
    """An upstream's 2xx answer, its body not read yet."""

    response: httpx.Response
    sent_at: float  # time.monotonic() when the answered attempt was sent


@dataclass(frozen=True)
class Refusal:
    """An upstream reply we will not stream: our error, and whether to try again."""

    error: ServingError
    retry: bool
    retry_after_s: float | None = None


class UpstreamHttp:
    """One upstream server: its pooled client and the rules for every call to it."""

    def __init__(self, model: str, spec: UpstreamSpec, api_key: str | None) -> None:
        self.model = model
        self.spec = spec
        self._api_key = api_key
        headers = {metadata.AUTHORIZATION: f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=spec.base_url.rstrip("/"),
            headers=headers,
            timeout=self._timeout(),
            # One more than the calls we let in: a health probe never waits for a slot.
            limits=httpx.Limits(max_connections=spec.max_in_flight + 1),
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment must not see our key
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warned: set[str] = set()
        self.in_flight = 0

    # -- calls -----------------------------------------------------------------------------

    @asynccontextmanager
    async def stream(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> AsyncIterator[Reply]:
        """The upstream's 2xx reply, headers read and body not yet: retried and mapped
        before that, closed (connection and all) when the block exits."""
        self._loop = asyncio.get_running_loop()
        if self.in_flight >= self.spec.max_in_flight:
            raise ResourceExhausted(
                f"model {self.model}: {self.in_flight} upstream calls already open; retry later"
            )
        self.in_flight += 1
        started = time.perf_counter()
        try:
            reply = await self._send_with_retries(method, path, body)
            try:
                yield reply
            finally:
                await reply.response.aclose()
        finally:
            self.in_flight -= 1
            current_call_details().upstream_ms = (time.perf_counter() - started) * 1000

    async def timed(self, reply: Reply, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """`items` read from an open reply: the first within what is left of the first-byte
        limit (counted from when the answered attempt was sent), each later one within the
        idle limit; any failure ends the stream with a non-OK status."""
        timeouts = self.spec.timeouts
        limit = timeouts.first_byte_s - (time.monotonic() - reply.sent_at)
        waiting_for = "its first byte"
        try:
            while True:
                left = seconds_left()
                wait = limit if left is None else min(limit, left)
                try:
                    async with asyncio.timeout(max(wait, 0.0)):
                        item = await anext(items)
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"model {self.model}: the upstream sent nothing for {wait:.1f} s while "
                        f"we waited for {waiting_for}"
                    ) from None
                limit, waiting_for = timeouts.idle_s, "more of the stream"
                yield item
        except StopAsyncIteration:
            return
        except httpx.HTTPError as error:
            raise Unavailable(
                f"model {self.model}: the upstream stream broke ({type(error).__name__}); "
                "the output is incomplete"
            ) from error

    async def fetch_json(
        self, method: str, path: str, body: dict[str, Any], max_bytes: int, what: str
    ) -> Any:
        """A whole JSON reply (embeddings, images), read under the same limits and at most
        `max_bytes` of it (`what` says why that much: in the error past it)."""
        chunks: list[bytes] = []
        received = 0
        async with self.stream(method, path, body) as reply:
            async for chunk in self.timed(reply, reply.response.aiter_bytes()):
                received += len(chunk)
                if received > max_bytes:
                    raise Unavailable(
                        f"model {self.model}: the upstream's reply passed {max_bytes} bytes, "
                        f"the most {what} takes"
                    )
                chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, RecursionError):  # RecursionError: nesting a mile deep
            raise Unavailable(f"model {self.model}: the upstream's reply is not JSON") from None

    def warn_once(self, what: str, message: str) -> None:
        """A warning about this upstream, logged the first time only (it would repeat on
        every request)."""
        if what not in self._warned:
            self._warned.add(what)
            logger.warning("model %s: %s", self.model, message)

    async def problem(self, path: str) -> str | None:
        """One health probe: None when the upstream answers and accepts our key, else
        what is wrong (for the log: never the key)."""
        self._loop = asyncio.get_running_loop()
        try:
            response = await self._client.get(path, timeout=self.spec.timeouts.connect_s)
        except httpx.HTTPError as error:
            return f"unreachable ({type(error).__name__})"
        return _probe_problem(response)

    def problem_now(self, path: str) -> str | None:
        """The same probe, blocking: for the model's load, before any loop runs it."""
        try:
            response = httpx.get(
                self.spec.base_url.rstrip("/") + path,
                headers=self._client.headers,
                timeout=self.spec.timeouts.connect_s,
                trust_env=False,
            )
        except httpx.HTTPError as error:
            return f"unreachable ({type(error).__name__})"
        return _probe_problem(response)

    def close(self) -> None:
        """Closes the pool on the loop that used it (engines close from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(self._client.aclose())
        else:
            asyncio.run_coroutine_threadsafe(self._client.aclose(), loop)

    # -- the retry loop -------------------------------------------------------------------

    async def _send_with_retries(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> Reply:
        retries = self.spec.retries
        for attempt in range(1, retries.attempts + 1):
            refusal, reply = await self._attempt(method, path, body)
            if reply is not None:
                return reply
            assert refusal is not None
            wait = self._wait_before_retry(refusal, attempt)
            if wait is None:
                raise refusal.error
            logger.info(
                "model %s: upstream refused (%s); retry %d in %.2f s",
                self.model,
                refusal.error,
                attempt,
                wait,
            )
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # the last attempt raises or returns

    async def _attempt(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[Refusal | None, Reply | None]:
        request = self._client.build_request(
            method,
            path,
            json=body,
            headers={REQUEST_ID_METADATA_KEY: current_request_id()},
            timeout=self._timeout(),
        )
        first_byte_s = self._limit(self.spec.timeouts.first_byte_s)
        sent_at = time.monotonic()
        try:
            async with asyncio.timeout(first_byte_s):
                response = await self._client.send(request, stream=True)
        except TimeoutError:
            error: ServingError = DeadlineExceeded(
                f"model {self.model}: the upstream did not answer within {first_byte_s:.1f} s"
            )
            return Refusal(error, retry=False), None
        except httpx.HTTPError as failure:
            kind = type(failure).__name__
            error = Unavailable(f"model {self.model}: upstream unreachable ({kind})")
            return Refusal(error, retry=_nothing_was_sent(failure)), None
        if response.is_success:
            return None, Reply(response, sent_at)
        try:
            quoted = await self._quote_error(response)
        finally:
            await response.aclose()
        return self._refusal(response, quoted), None

    def _refusal(self, response: httpx.Response, quoted: str) -> Refusal:
        status = response.status_code
        said = f"upstream answered {status}" + (f": {quoted}" if quoted else "")
        retry = status in RETRYABLE_STATUSES
        wait = retry_after_s(response.headers)
        error: ServingError
        if status == 429:
            error = ResourceExhausted(
                f"model {self.model}: {said}", retry_after_s=wait if wait is not None else 1.0
            )
        elif status in (401, 403):
            # The caller's credentials are fine: ours were refused. Say so, quote nothing
            # (an upstream may echo part of the key back).
            error = FailedPrecondition(
                f"model {self.model}: the upstream refused genserve's credentials for it "
                f"(HTTP {status}); an operator must fix the model's upstream key"
            )
        elif status == 404:
            error = NotFound(f"model {self.model}: {said}")
        elif status in (408, 504):
            error = DeadlineExceeded(f"model {self.model}: {said}")
        elif status >= 500:
            error = Unavailable(f"model {self.model}: {said}")
        else:
            error = InvalidArgument("request", f"model {self.model}: {said}")
        return Refusal(error, retry=retry, retry_after_s=wait)

    def _wait_before_retry(self, refusal: Refusal, attempt: int) -> float | None:
        """Seconds to wait before the next try, or None to give up now."""
        retries = self.spec.retries
        if not refusal.retry or attempt >= retries.attempts:
            return None
        jitter = random.uniform(0, retries.backoff_s * 2 ** (attempt - 1))
        wait = jitter if refusal.retry_after_s is None else refusal.retry_after_s + jitter / 4
        left = seconds_left()
        if wait > retries.max_wait_s or (left is not None and wait >= left):
            return None  # the error (429's carries the delay) goes back to the caller
        return wait

    # -- small parts ------------------------------------------------------------------------

    def _limit(self, seconds: float) -> float:
        left = seconds_left()
        return seconds if left is None else max(min(seconds, left), 0.001)

    def _timeout(self) -> httpx.Timeout:
        """httpx's own limits for connecting and sending; waiting for the answer is timed
        by `_attempt` (the first byte) and `timed` (each later piece), which know which
        limit applies."""
        timeouts = self.spec.timeouts
        connect = self._limit(timeouts.connect_s)
        return httpx.Timeout(connect=connect, read=None, write=timeouts.idle_s, pool=connect)

    async def _quote_error(self, response: httpx.Response) -> str:
        """The upstream's own error message, short, with our key scrubbed out of it."""
        if response.status_code in (401, 403):
            return ""
        body = b""
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= MAX_ERROR_BODY_BYTES:
                    break
        except httpx.HTTPError:
            pass
        message = _error_message(body)
        if self._api_key:
            message = message.replace(self._api_key, "***")
        return message[:MAX_QUOTED_CHARS]


def _nothing_was_sent(failure: httpx.HTTPError) -> bool:
    """Safe to send again: the upstream cannot have started on it. A connection that
    could not be opened, or a pooled keep-alive connection the server had closed just
    before we wrote on it (it answers nothing). Not a read or write that failed midway."""
    if isinstance(failure, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return True
    return isinstance(failure, httpx.RemoteProtocolError) and "without sending" in str(failure)


def _probe_problem(response: httpx.Response) -> str | None:
    if response.is_success:
        return None
    if response.status_code in (401, 403):
        return f"refuses genserve's credentials (HTTP {response.status_code})"
    return f"answers HTTP {response.status_code}"


def retry_after_s(headers: httpx.Headers) -> float | None:
    """Retry-After in seconds (a number or an HTTP date), or retry-after-ms; within
    [0, a day], and None for anything else (nan, inf, garbage)."""
    seconds: float | None = None
    exact = headers.get(metadata.RETRY_AFTER_MS)
    value = headers.get(metadata.RETRY_AFTER)
    if exact is not None:
        seconds = _number(exact)
        seconds = None if seconds is None else seconds / 1000
    if seconds is None and value is not None:
        seconds = _number(value)
        if seconds is None:
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError):
                return None
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _error_message(body: bytes) -> str:
    """OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the text itself."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if "detail" in parsed:
            return str(parsed["detail"])
    return body.decode("utf-8", "replace").strip()
