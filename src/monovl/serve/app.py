"""The FastAPI app: OpenAI's chat-completions API, models, health, metrics and the chat page.

    app = create_app("runs/demo/final")                      # or create_app(model, processor, ...)
    uvicorn.run(app, host="127.0.0.1", port=8000)

A request goes: JSON -> `protocol.conversation` (messages to question/history/images) -> images
through `media.MediaPolicy` and the checkpoint's `MonoProcessor` (on a worker thread: decoding and
tiling must not block the event loop) -> length checks -> `Scheduler.submit` -> token ids back on
an asyncio queue -> text through the processor's incremental decoder and the stop strings -> one
JSON response, or SSE chunks. Every failure before generation is an OpenAI error object with a 4xx
status; nothing a client sends reaches the scheduler unchecked.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..engine.generate import SamplingParams, context_limit
from ..model.mono_internvl import MonoInternVL
from ..processing import MonoProcessor
from .batch import kv_bytes_per_token
from .media import MediaPolicy
from .protocol import (APIError, ChatCompletionRequest, Conversation, StopStringMatcher, chunk, completion,
                       completion_id, conversation, error_body, usage)
from .scheduler import Failed, Finished, GenerationRequest, Handle, QueueFull, Scheduler, ShuttingDown, Token

PAGE_DIR = Path(__file__).parent / "page"


@dataclass
class ServeConfig:
    """Server settings; the CLI flags of `monovl serve` map onto these fields.

    `max_model_len`: prompt + new tokens per request (default: the model's position limit, or
    `max_position_embeddings` when dynamic RoPE scaling has none). `kv_cache_bytes`: KV memory for
    the running batch (default: enough for `max_num_seqs` full-length sequences, at most 4 GiB).
    `prefill_chunk`: prompt tokens prefilled per scheduler turn. `max_tiles`: tiles per request,
    thumbnails included. `max_request_bytes`: the largest request body (HTTP 413 beyond)."""

    served_model_name: str = "monovl"
    max_num_seqs: int = 16
    max_model_len: int | None = None
    max_queue: int = 256
    kv_cache_bytes: int | None = None
    prefill_chunk: int = 512
    default_max_tokens: int = 512
    max_images: int = 8
    max_tiles: int = 64
    max_request_bytes: int = 32 * 1024 * 1024
    media: MediaPolicy = field(default_factory=MediaPolicy)
    shutdown_timeout: float = 30.0
    retry_after_s: int = 1
    cpu_decode: bool | None = None
    quantize: str | None = None  # "int8": weight-only int8 decode (monovl.model.quantize), a directory only
    trace: bool = False  # record the scheduler's turns (tests)


# ---- metrics ----------------------------------------------------------------------------------------

# TTFT buckets from interactive (tens of ms) to a long image prompt on a busy CPU (minutes).
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)


class ServerMetrics:
    """Prometheus metrics for `GET /metrics`, on a registry of the app's own (two apps in one process,
    as in the tests, do not collide in the global one):

    - `monovl_requests_total{outcome}`: chat requests by outcome, `stop`, `length`, `abort` (the client
      left), `error` (a 4xx/5xx before or during generation) or `rejected` (503);
    - `monovl_prompt_tokens_total`: prompt tokens processed (counted at the first token);
    - `monovl_generation_tokens_total`: tokens generated, stop tokens included;
    - `monovl_time_to_first_token_seconds`: histogram, from arrival at the scheduler to the first token;
    - `monovl_num_requests_waiting`, `monovl_num_requests_running`: gauges, queued requests, and sequences
      being prefilled or decoded (holding KV memory);
    - `monovl_kv_cache_usage_tokens`, `monovl_kv_cache_budget_tokens`: KV token slots the batch needs, the budget.
    """

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("monovl_requests", "Chat completion requests by outcome", ["outcome"], registry=r)
        self.prompt_tokens = Counter("monovl_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("monovl_generation_tokens", "Generated tokens", registry=r)
        self.ttft = Histogram("monovl_time_to_first_token_seconds", "Time to first token", registry=r,
                              buckets=TTFT_BUCKETS)
        self.waiting = Gauge("monovl_num_requests_waiting", "Requests waiting for a slot", registry=r)
        self.running = Gauge("monovl_num_requests_running", "Sequences prefilling or decoding", registry=r)
        self.kv_usage = Gauge("monovl_kv_cache_usage_tokens", "KV cache token slots needed by the batch", registry=r)
        self.kv_budget = Gauge("monovl_kv_cache_budget_tokens", "KV cache budget in token slots", registry=r)

    def bind(self, scheduler: Scheduler) -> None:
        """Read the gauges from the scheduler at scrape time, and count tokens as sequences end."""
        self.waiting.set_function(lambda: scheduler.num_waiting)
        self.running.set_function(lambda: scheduler.num_running)
        self.kv_usage.set_function(scheduler.kv_tokens_reserved)
        self.kv_budget.set(scheduler.kv_budget_tokens)
        scheduler.on_first_token = self._first_token
        scheduler.on_finish = self._finished

    def _first_token(self, handle: Handle, seconds: float) -> None:
        self.ttft.observe(seconds)
        self.prompt_tokens.inc(handle.prompt_tokens)  # the prompt has been processed by now

    def _finished(self, handle: Handle, event) -> None:
        if isinstance(event, Finished):
            self.generation_tokens.inc(event.completion_tokens)

    def outcome(self, name: str) -> None:
        self.requests.labels(outcome=name).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Server:
    """What the endpoints share: model, processor, scheduler, metrics and settings."""

    def __init__(self, model: MonoInternVL, processor: MonoProcessor, config: ServeConfig):
        self.model, self.processor, self.config = model, processor, config
        cfg = model.config.llm
        limit = context_limit(cfg) or cfg.max_position_embeddings
        self.max_model_len = min(config.max_model_len or limit, limit)
        per_token = kv_bytes_per_token(model)
        budget = config.kv_cache_bytes
        if budget is None:
            budget = min(4 * 1024**3, config.max_num_seqs * self.max_model_len * per_token)
        self.scheduler = Scheduler(model, max_num_seqs=config.max_num_seqs, max_queue=config.max_queue,
                                   kv_budget_tokens=max(1, budget // per_token), prefill_chunk=config.prefill_chunk,
                                   cpu_decode=config.cpu_decode, trace=config.trace)
        self.metrics = ServerMetrics()
        self.metrics.bind(self.scheduler)
        self.stop_ids = frozenset(processor.stop_token_ids)

    # ---- request preparation (worker thread) -----------------------------------------------------

    def prepare(self, conv: Conversation) -> dict:
        """Load the images and build the prompt; APIError(400) for anything the model cannot take."""
        images = [self.config.media.load(url) for url in conv.image_urls]  # MediaError is a ValueError
        inputs = self.processor(conv.question, images=images or None, history=conv.history,
                                system_message=conv.system)
        tiles = sum(inputs["tiles_per_image"])
        if tiles > self.config.max_tiles:
            raise APIError(400, f"too many tiles: the images make {tiles} tiles, over the server limit of "
                                f"{self.config.max_tiles}; send fewer or smaller images", code="too_many_tiles")
        return inputs

    def max_tokens(self, body: ChatCompletionRequest, prompt_len: int) -> int:
        requested = body.max_completion_tokens or body.max_tokens
        room = self.max_model_len - prompt_len
        if requested is None and room >= 1:
            return min(self.config.default_max_tokens, room)
        asked = requested or 1
        if asked > room:
            raise APIError(400, f"prompt of {prompt_len} tokens + max_tokens {asked} = {prompt_len + asked} tokens "
                                f"exceeds the server's max_model_len {self.max_model_len}; shorten the prompt "
                                "(fewer images or less history) or lower max_tokens",
                           param="max_tokens" if requested else "messages", code="context_length_exceeded")
        return asked

    async def submit(self, body: ChatCompletionRequest) -> tuple[Handle, list[str]]:
        body.check_supported()
        if body.model and body.model != self.config.served_model_name:
            raise APIError(404, f"The model `{body.model}` does not exist; this server serves "
                                f"`{self.config.served_model_name}`", param="model", code="model_not_found")
        stops = body.stop_strings()
        conv = conversation(body.messages, self.config.max_images)
        try:
            inputs = await run_in_threadpool(self.prepare, conv)
        except APIError:
            raise
        except ValueError as exc:  # media refusals, unreadable images, the processor's input checks
            raise APIError(400, str(exc), param="messages") from None
        prompt_len = int(inputs["input_ids"].shape[1])
        temperature = 1.0 if body.temperature is None else body.temperature
        sampling = SamplingParams(do_sample=temperature > 0, temperature=temperature or 1.0,
                                  top_p=body.top_p or 1.0, seed=body.seed)
        request = GenerationRequest(inputs["input_ids"][0], inputs["pixel_values"], inputs["image_token_id"],
                                    self.max_tokens(body, prompt_len), sampling,
                                    frozenset() if body.ignore_eos else self.stop_ids)
        try:
            return self.scheduler.submit(request), stops
        except (QueueFull, ShuttingDown) as exc:
            raise APIError(503, str(exc), type="server_error", code="overloaded",
                           headers={"Retry-After": str(self.config.retry_after_s)}) from None
        except ValueError as exc:  # larger than the whole KV budget
            raise APIError(400, str(exc), param="max_tokens", code="context_length_exceeded") from None

    # ---- generation (event loop) -----------------------------------------------------------------

    async def results(self, handle: Handle, stops: list[str], request: Request) -> AsyncIterator[tuple]:
        """Yield ("text", str), then one ("end", finish_reason, completion_tokens) or ("error", message).

        Cancels the request in the scheduler when the answer hit a stop string, when the client
        disconnects, and in any case on exit (a no-op once it finished), so no slot stays held."""
        decoder = self.processor.incremental_decoder(skip_special_tokens=True)
        matcher = StopStringMatcher(stops)
        received, outcome = 0, "abort"  # stays "abort" if the client leaves (or the task is cancelled)
        gone = asyncio.create_task(_disconnected(request))
        try:
            while True:
                getter = asyncio.ensure_future(handle.events.get())
                await asyncio.wait({getter, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    return
                event = getter.result()
                if isinstance(event, Token):
                    received += 1
                    try:
                        piece = decoder.add(event.id)
                    except ValueError as exc:  # an id the tokenizer lacks: a model/tokenizer mismatch
                        outcome = "error"
                        yield ("error", f"could not decode generated token {event.id}: {exc}")
                        return
                    text, hit = matcher.feed(piece)
                    if text:
                        yield ("text", text)
                    if hit:
                        outcome = "stop"
                        yield ("end", "stop", received)
                        return
                elif isinstance(event, Finished):
                    text, hit = matcher.feed(decoder.flush())
                    text += "" if hit else matcher.flush()
                    if text:
                        yield ("text", text)
                    outcome = "stop" if hit or event.reason == "stop" else event.reason
                    yield ("end", outcome, event.completion_tokens)
                    return
                else:
                    assert isinstance(event, Failed)
                    outcome = "error"
                    yield ("error", event.message)
                    return
        finally:
            gone.cancel()
            self.scheduler.cancel(handle)
            self.metrics.outcome(outcome)


class BodySizeLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413, before they are buffered.

    A declared Content-Length over the limit is refused without reading a byte; a body sent without
    one (chunked) is counted as it arrives and refused once it passes the limit."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._refuse(send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # FastAPI lets an HTTPException from reading the body through to the handlers.
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"the request body is larger than the server's limit of {self.limit} bytes"

    async def _refuse(self, send) -> None:
        body = json.dumps(error_body(self._message(), code="request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


async def _disconnected(request: Request) -> None:
    """Return when the client goes away (the body was already read, so only http.disconnect comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(model: MonoInternVL | str | Path, processor: MonoProcessor | None = None,
               config: ServeConfig | None = None, **overrides) -> FastAPI:
    """The server app for a checkpoint directory, or for a loaded model and its processor.

    `config` (or keyword overrides of its fields) sets the limits; `served_model_name` defaults to
    the directory's basename. The scheduler thread starts with the app's lifespan and stops with it.
    """
    config = replace(config or ServeConfig(), **overrides)
    if isinstance(model, (str, Path)):
        directory = Path(model)
        if "served_model_name" not in overrides and (config.served_model_name == ServeConfig.served_model_name):
            config = replace(config, served_model_name=directory.resolve().name)
        processor = processor or MonoProcessor.from_pretrained(directory)
        model = MonoInternVL.from_pretrained(directory, quantize=config.quantize)
    if processor is None:
        raise ValueError("create_app(model=...) with a loaded model needs its processor")
    server = Server(model, processor, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.scheduler.start()
        yield
        await run_in_threadpool(server.scheduler.stop, config.shutdown_timeout)

    app = FastAPI(title="monovl", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    app.add_middleware(BodySizeLimit, limit=config.max_request_bytes)

    def counted(request: Request, status: int) -> None:
        if request.url.path == "/v1/chat/completions":
            server.metrics.outcome("rejected" if status == 503 else "error")

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        counted(request, exc.status)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        counted(request, 400)
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            message = f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
        else:
            message = f"{where or 'body'}: {first.get('msg', 'invalid request')}"
            if len(errors) > 1:
                message += f" (and {len(errors) - 1} more problems)"
        return JSONResponse(error_body(message, param=where or None), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        counted(request, exc.status_code)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        counted(request, 500)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)

    @app.get("/health")
    async def health():
        thread = server.scheduler._thread
        if thread is None or not thread.is_alive():
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": config.served_model_name, "object": "model", "created": 0,
                                            "owned_by": "monovl", "max_model_len": server.max_model_len}]}

    @app.get("/metrics")
    async def metrics():
        body, content_type = server.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/")
    async def page():
        return FileResponse(PAGE_DIR / "index.html")

    app.mount("/page", StaticFiles(directory=PAGE_DIR), name="page")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        handle, stops = await server.submit(body)
        cid, name = completion_id(), config.served_model_name
        if not body.stream:
            return await _collect(server, handle, stops, request, cid, name)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(server, handle, stops, request, cid, name, include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


async def _collect(server: Server, handle: Handle, stops: list[str], request: Request, cid: str, name: str):
    pieces: list[str] = []
    async for item in server.results(handle, stops, request):
        if item[0] == "text":
            pieces.append(item[1])
        elif item[0] == "end":
            return completion(cid, name, "".join(pieces), item[1], handle.prompt_tokens, item[2])
        else:
            return JSONResponse(error_body(item[1], "server_error"), status_code=500)
    return Response(status_code=499)  # the client is gone; nobody reads this


async def _stream(server: Server, handle: Handle, stops: list[str], request: Request, cid: str, name: str,
                  include_usage: bool) -> AsyncIterator[str]:
    created = int(time.time())
    yield _sse(chunk(cid, name, created, {"role": "assistant", "content": ""}, with_usage_field=include_usage))
    async for item in server.results(handle, stops, request):
        if item[0] == "text":
            yield _sse(chunk(cid, name, created, {"content": item[1]}, with_usage_field=include_usage))
        elif item[0] == "end":
            yield _sse(chunk(cid, name, created, {}, item[1], with_usage_field=include_usage))
            if include_usage:
                yield _sse(chunk(cid, name, created, None, usage_=usage(handle.prompt_tokens, item[2]),
                                 with_usage_field=True))
        else:
            # Mid-stream failures (shutdown, a model fault) end the stream with an error object.
            yield _sse(error_body(item[1], "server_error"))
    yield _sse("[DONE]")
