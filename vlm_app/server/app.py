"""The OpenAI-compatible HTTP server (`python -m vlm_app serve`): FastAPI routes over `vlm_app.service`.

    GET  /v1/models              the models on offer (--models)
    POST /v1/chat/completions    one answer, or server-sent chunks ending with `data: [DONE]`
    GET  /health                 liveness (no key needed)

Every /v1 route checks the Bearer key (constant-time) before reading the body; the body is read with a byte cap
and a deadline. One model job runs at a time, in a worker thread; up to `max_queue` wait, and more get 429. A
client that goes away cancels its job, which stops the model within one token. A chapters request
(`vlm_app.chapters`) is one job of one request per segment (`vlm_app.chapters.describe_chapters`), each chapter
streamed as it finishes, then the summary; cancelled, it stops within the segment being described. Failures are
OpenAI error objects with a 4xx status for every client mistake (400 `memory_limit` for a request that cannot fit
under the operator's --max-memory), 507 when the request needs more memory than the machine has; a 500 means a bug.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from vlm_app.errors import (DecodeError, DurationLimitError, LimitError, MemoryLimitError, ModelLoadError,
                            NotOfferedError, OptionsError, OutOfMemory, SourceError, VlmAppError)
from vlm_app.memory import MemoryLimit
from vlm_app.security import offered_model
from vlm_app.server.protocol import (ApiError, chunk, completion, completion_id, extension, finish_reason, parse_chat,
                                     usage)
from vlm_app.service import Run

log = logging.getLogger("vlm_app.server")
MIB = 2**20


@dataclass
class ServerConfig:
    models: list[str]                  # the served names (`vlm_app.served`)
    sources: dict[str, str] = field(default_factory=dict)  # served name -> what loads (absent: the name itself)
    api_key: str | None = None
    limits: Any = None                 # the media pipeline's Limits for client-named media (the fetch guard)
    max_body_bytes: int = 16 * MIB
    body_seconds: float = 10.0         # the whole body must arrive within this
    max_queue: int = 8                 # jobs that may wait while one runs
    load_options: dict = field(default_factory=dict)  # device, dtype
    memory_budget_bytes: int | None = None
    memory: MemoryLimit = MemoryLimit(None)  # every request's memory limit; clients cannot change it
    keepalive_seconds: float = 15.0    # a quiet stream sends an SSE comment this often
    max_batch: int = 1                 # answers generated together (`vlm_app.batching.Gatherer`); 1: one job at a time
    batch_wait_ms: float = 0.0         # how long a batch's first request waits for others to arrive
    offer: Any = None                  # `vlm_app.lora.Offer`: which models are LoRA adapters, on which base


class Jobs:
    """`slots` model jobs at a time (one, unless answers are batched); at most `max_queue` waiting for a slot, more
    are refused with 429."""

    def __init__(self, max_queue: int, slots: int = 1):
        self.max_queue = max_queue
        self._lock = asyncio.Semaphore(slots)
        self._waiting = 0

    async def enter(self) -> None:
        if self._lock.locked() and self._waiting >= self.max_queue:
            raise ApiError(429, f"the server is busy ({self.max_queue} requests already wait for the model); "
                                "retry later", code="queue_full", kind="rate_limit_error")
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1

    def leave(self) -> None:
        self._lock.release()


def as_api_error(error: VlmAppError) -> ApiError:
    """The HTTP form of a user-caused failure."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, ModelLoadError):
        return ApiError(503, f"the model could not be loaded: {error}", "model", "model_unavailable", "server_error")
    if isinstance(error, DecodeError):
        return ApiError(422, str(error), "messages", "undecodable_media")
    if isinstance(error, OutOfMemory):  # the same request fails the same way: tell clients not to retry it as is
        return ApiError(507, str(error), "messages", "out_of_memory", "server_error", {"x-should-retry": "false"})
    if isinstance(error, DurationLimitError):  # this server's way to a longer video, not the CLI's
        return ApiError(400, f"{error.label} lasts {error.seconds:.0f} s, over this server's {error.limit:g} s limit "
                             'for one request; ask for it in chapters, "vlm_app": {"chapters": {}} (one request per '
                             "part of the video, then a summary)", "messages", "limit_exceeded")
    codes = {SourceError: "invalid_source", MemoryLimitError: "memory_limit", LimitError: "limit_exceeded",
             OptionsError: "invalid_options"}
    return ApiError(400, str(error), "messages", next((code for kind, code in codes.items() if isinstance(error, kind)),
                                                      "invalid_request"))


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


class Server:
    def __init__(self, config: ServerConfig):
        from vlm_app.batching import Gatherer
        from vlm_app.runtime import ModelCache

        from vlm_app.lora import Offer

        self.config = config
        self.offer = config.offer or Offer(tuple(config.models))
        if config.max_batch > 1 and self.offer.loras:  # a batch runs on one active adapter; switching is per job
            raise OptionsError("--max-batch does not go with --lora yet; serve LoRA adapters with --max-batch 1")
        self.cache = ModelCache(config.memory_budget_bytes)
        # batched: a batch's answers, and one request ahead preparing its media while they generate
        self.jobs = Jobs(config.max_queue, config.max_batch + 1 if config.max_batch > 1 else 1)
        self.gatherer = Gatherer(config.max_batch, config.batch_wait_ms / 1000) if config.max_batch > 1 else None
        self.started = int(time.time())
        self._key = config.api_key.encode() if config.api_key else None

    # ---- checks, in the order a request meets them ------------------------------------------------------------
    def check_key(self, request: Request) -> None:
        if self._key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self._key):
            raise ApiError(401, "missing or wrong API key; send the header 'Authorization: Bearer <key>'", None,
                           "invalid_api_key")

    async def read_json(self, request: Request) -> Any:
        cap = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > cap):
            raise ApiError(413, f"the request body is over this server's {cap // MIB} MiB limit; send media by "
                                "URL instead of inline", None, "body_too_large")
        chunks: list[bytes] = []

        async def collect() -> None:
            size = 0
            async for piece in request.stream():
                size += len(piece)
                if size > cap:
                    raise ApiError(413, f"the request body is over this server's {cap // MIB} MiB limit", None,
                                   "body_too_large")
                chunks.append(piece)

        try:
            await asyncio.wait_for(collect(), self.config.body_seconds)
        except TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {self.config.body_seconds:g} s", None,
                           "body_timeout") from None
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, RecursionError) as error:
            raise ApiError(400, f"the request body is not valid JSON ({str(error)[:200]})", None,
                           "invalid_json") from None

    def check_model(self, name: str) -> None:
        try:
            offered_model(name, self.config.models)
        except NotOfferedError as error:
            raise ApiError(404, f"{error} (GET /v1/models lists them)", "model", "model_not_found") from None

    # ---- the model job ------------------------------------------------------------------------------------------
    def _work(self, call, cancel: threading.Event, loop, events: asyncio.Queue) -> None:
        """In a worker thread: load (cached), then answer or describe in chapters; every step goes to `events`
        ("ready" once the media is read, "text" pieces, "done" with the record, or "error"). Leaves the job slot
        when done, so the next job starts only after this one's model work has really stopped."""
        def put(kind: str, value: Any = None) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        try:
            if cancel.is_set():
                log.info("request on %s: the client left while it waited; not run", call.model)
                raise ApiError(400, "the client disconnected while waiting for the model", None, "client_disconnected")
            source = self.config.sources.get(call.model, call.model)
            adapter = self.offer.adapter(self.cache, source, **self.config.load_options)  # LoRA switched in
            if call.chapters is not None:
                with self.gatherer.alone() if self.gatherer is not None else nullcontext():
                    put("done", _chapters(adapter, call, cancel, put))
            else:
                put("done", _answer(adapter, call, cancel, put, self.gatherer))
        except VlmAppError as error:
            if isinstance(error, OutOfMemory):  # not the client's mistake alone: the operator should see it too
                log.warning("request on %s: %s", call.model, error)
            put("error", as_api_error(error))
        except Exception as error:  # a bug: logged with its traceback, answered as a 500
            log.exception("request on %s failed", call.model)
            put("error", error)
        finally:
            loop.call_soon_threadsafe(self.jobs.leave)

    async def chat(self, request: Request):
        self.check_key(request)
        call = parse_chat(await self.read_json(request), self.config.limits, self.config.memory)
        self.check_model(call.model)
        cancel, events = threading.Event(), asyncio.Queue()
        # a client that leaves while its request waits, loads or reads its media cancels it; once a stream has
        # started, its writes notice (the stream's keep-alives, while the model is quiet)
        watcher = asyncio.create_task(_cancel_on_disconnect(request, cancel))
        try:
            await self.jobs.enter()
            threading.Thread(target=self._work, args=(call, cancel, asyncio.get_running_loop(), events),
                             daemon=True).start()
            kind, value = await events.get()
            if kind == "error":
                raise value
            call_id = completion_id()
            if call.stream:
                return StreamingResponse(self._chunks(call, call_id, events, cancel), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache"})
            while (event := await events.get())[0] == "text":
                pass
        finally:
            watcher.cancel()
        kind, value = event
        if kind == "error":
            raise value
        return JSONResponse(completion(call_id, call.model, value))

    async def _chunks(self, call, call_id: str, events: asyncio.Queue, cancel: threading.Event) -> AsyncIterator[str]:
        try:
            yield _sse(chunk(call_id, call.model, {"role": "assistant", "content": ""}))
            while True:
                try:
                    kind, value = await asyncio.wait_for(events.get(), self.config.keepalive_seconds)
                except asyncio.TimeoutError:  # an SSE comment, which clients skip: proxies keep the connection open
                    yield ": keep-alive\n\n"
                    continue
                if kind == "text":
                    text, entries = value
                    yield _sse(chunk(call_id, call.model, {"content": text}, entries=entries))
                    continue
                if kind == "done":
                    yield _sse(chunk(call_id, call.model, {}, finish_reason(value), vlm_app=extension(value)))
                    if call.include_usage:
                        yield _sse({**chunk(call_id, call.model, {}), "choices": [], "usage": usage(value)})
                else:  # headers are sent: the failure goes in the stream
                    failure = value if isinstance(value, ApiError) else ApiError(500, "internal error (a bug; see the "
                                                                                      "server log)", kind="server_error")
                    yield _sse(failure.body())
                break
            yield _sse("[DONE]")
        finally:
            cancel.set()  # the client went away (or the stream ended): stop the model within one token

    def models(self, request: Request) -> dict:
        self.check_key(request)
        return {"object": "list", "data": [{"id": name, "object": "model", "created": self.started,
                                            "owned_by": "vlm_app", **self._lineage(name)}
                                           for name in self.config.models]}

    def _lineage(self, name: str) -> dict:
        """vLLM's fields of a LoRA adapter's entry: the base model it runs on."""
        if name not in self.offer.loras:
            return {}
        base = self.offer.base_of(name)
        return {"parent": next((served for served, source in self.config.sources.items() if source == base), base)}


def _answer(adapter, call, cancel: threading.Event, put, gatherer=None) -> dict:
    """With a `gatherer`, the answer is generated in a batch with other requests' (its own row: its own stream,
    stop strings and cancel)."""
    run = Run(adapter, call.request, cancel)
    with gatherer.preparing(call.model) if gatherer is not None else nullcontext():
        run.prepare()
    put("ready")
    with gatherer.turn(run, call.model) if gatherer is not None else nullcontext():
        answer = ""
        for piece in run:  # each piece with the log-probabilities of its tokens, when asked
            answer += piece
            put("text", (piece, run.logprobs_upto(answer)))
    record = run.record
    log.info("%s finish=%s new_tokens=%d", call.model, record["finish_reason"], record["timings"]["new_tokens"])
    return record


def _chapters(adapter, call, cancel: threading.Event, put) -> dict:
    """The request's video in chapters: "ready" once the probe has read it (an unreadable video is the request's
    error), each chapter's line as its segment finishes, then the summary."""
    from vlm_app.chapters import describe_chapters, segment_line

    record = describe_chapters(adapter, call.request, call.chapters, cancel=cancel,
                               on_plan=lambda duration, segments: put("ready"),
                               on_segment=lambda segment: put("text", (segment_line(segment) + "\n", None)),
                               raise_unreadable=True)
    if record["summary"] is not None:
        put("text", (f"\nSummary: {record['summary']}", None))
    described = sum(segment["error"] is None and not segment["cancelled"] for segment in record["segments"])
    log.info("%s chapters: %d of %d segments described, cancelled=%s, new tokens %d", call.model, described,
             len(record["segments"]), record["cancelled"], (record["timings"] or {}).get("new_tokens", 0))
    return record


async def _cancel_on_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set `cancel` when the client disconnects (the body is already read, so the next message is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancel.set()


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def create_app(config: ServerConfig) -> FastAPI:
    server = Server(config)
    app = FastAPI(title="vlm_app", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return _error_response(error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return _error_response(ApiError(error.status_code, str(error.detail), None, "not_found"
                                        if error.status_code == 404 else "http_error"))

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception):
        log.error("unhandled %s: %s", type(error).__name__, error)
        return _error_response(ApiError(500, "internal server error (a bug; see the server log)", kind="server_error"))

    app.add_api_route("/v1/models", server.models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", server.chat, methods=["POST"])
    app.add_api_route("/health", lambda: {"status": "ok"}, methods=["GET"])
    return app
