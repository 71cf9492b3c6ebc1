"""An OpenAI-compatible HTTP server on FastAPI: a local target through the DraftEngine, or a compression proxy.

Local mode answers ``/v1/chat/completions`` and ``/v1/completions`` with ``DraftEngine.stream``; proxy mode
(``upstream`` set) compresses each chat request's retrieved context with ``DraftEngine.compress_messages`` and
forwards it to an OpenAI-compatible upstream (vLLM, TGI, llama.cpp server), passing its answer back unchanged.
Per request, ``"draft_rag": {"method": ..., "budget" | "ratio": ...}`` overrides the server's compression.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import ClassVar

import anyio
import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from .engine import METHODS, DraftEngine

access_log = logging.getLogger("draft_rag.access")
DRAFT_KEYS = ("method", "budget", "ratio", "pc_budget", "pc_ratio", "lookahead_tokens")
STATS_HEADER = "x-draft-rag-stats"


@dataclass
class ServeConfig:
    """What the server serves and its limits."""

    method: str = "specpc"  # default compression; a request's ``draft_rag`` field overrides it
    budget: int | None = None
    ratio: float | None = None
    model_name: str = "draft-rag"  # the id /v1/models lists and responses carry
    api_key: str | None = None  # when set, /v1/* need ``Authorization: Bearer <api_key>``
    upstream: str | None = None  # proxy mode: base URL of an OpenAI-compatible server, e.g. http://host:8000/v1
    upstream_api_key: str | None = None
    max_body_bytes: int = 4_000_000
    max_tokens: int = 2048  # the most completion tokens a request may ask for
    default_max_tokens: int = 256  # when a request names none (capped at max_tokens)
    max_queue: int = 8  # requests that may wait for the engine beside the one it runs; more get 429
    queue_timeout: float = 60.0  # seconds a request may wait for the engine before a 503

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in ("max_body_bytes", "max_tokens", "default_max_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.api_key is not None and not (isinstance(self.api_key, str) and self.api_key.strip()):
            raise ValueError("api_key must be a non-empty string (or None for an open server)")
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ValueError(f"max_queue must be an integer >= 0, got {self.max_queue!r}")
        if self.upstream and self.method not in ("specpc", "full"):
            raise ValueError(f"with upstream (proxy mode) method must be 'specpc' or 'full', got {self.method!r}")


class ApiError(Exception):
    """An error answered as OpenAI's ``{"error": {...}}`` JSON."""

    TYPES: ClassVar[dict] = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        502: "upstream_error",
        503: "server_overloaded",
    }

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        err = {
            "message": self.message,
            "type": self.TYPES.get(self.status, "server_error"),
            "param": self.param,
            "code": self.code,
        }
        return JSONResponse({"error": err}, status_code=self.status)


class EngineQueue:
    """One engine job at a time; ``size`` more may wait (more get 429); a wait over ``timeout`` s gets 503.

    Engine work runs in worker threads one call at a time (``call``): an idle worker is reused, so the model's
    memory stays in few allocator arenas.
    """

    def __init__(self, size: int, timeout: float):
        self.size, self.timeout, self.admitted = size, timeout, 0
        self._lock = asyncio.Lock()
        self._limiter: anyio.CapacityLimiter | None = None

    async def call(self, fn, *args):
        """``fn(*args)`` in a worker thread; a cancelled caller still waits for it, so work never half-runs."""
        self._limiter = self._limiter or anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def acquire(self) -> None:
        if self.admitted > self.size:
            raise ApiError(
                429,
                f"the server is busy: {self.admitted} requests are running or queued; retry later",
                code="queue_full",
            )
        self.admitted += 1
        try:
            with anyio.fail_after(self.timeout):
                await self._lock.acquire()
        except BaseException as exc:
            self.admitted -= 1
            if isinstance(exc, TimeoutError):
                raise ApiError(
                    503, f"no engine slot within {self.timeout:g} s; retry later", code="queue_timeout"
                ) from None
            raise

    def release(self) -> None:
        self.admitted -= 1
        self._lock.release()


class EngineRun:
    """A ``GenerationStream`` driven from the event loop: each piece is decoded in a worker thread.

    ``close`` stops the generation (its generator's ``finally`` frees the engine lock) and the queue slot.
    """

    def __init__(self, stream, queue: EngineQueue):
        self.stream, self._pieces, self._queue, self.closed = stream, iter(stream), queue, False
        self.first: str | None = None

    async def start(self) -> None:
        """Run up to the first piece: compression and prefill happen here, so their errors come before any reply."""
        self.first = await self.next()

    async def next(self) -> str | None:
        return await self._queue.call(next, self._pieces, None)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                getattr(self._pieces, "close", lambda: None)()
            finally:
                self._queue.release()


class ClosingStream(StreamingResponse):
    """A streaming response that always runs ``on_close`` (client gone, error, or done), even if never started."""

    def __init__(self, content, on_close, **kwargs):
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


# -- request parsing -----------------------------------------------------------------------------
async def read_json(request: Request, limit: int) -> dict:
    """The request body as a JSON object; 413 past ``limit`` bytes."""
    size = request.headers.get("content-length")
    if size and size.isdigit() and int(size) > limit:
        raise ApiError(413, f"request body is {size} bytes; the limit is {limit}", code="request_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes", code="request_too_large")
    try:
        data = json.loads(body)
    except ValueError:
        raise ApiError(400, "the request body must be a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    return data


def draft_options(body: dict, cfg: ServeConfig) -> dict:
    """Engine keyword arguments from the request's ``draft_rag`` field, defaulting to the server's."""
    opts = body.get("draft_rag") or {}
    if not isinstance(opts, dict):
        raise ApiError(400, 'draft_rag must be an object such as {"method": "specpc", "ratio": 0.25}', "draft_rag")
    if unknown := sorted(set(opts) - set(DRAFT_KEYS)):
        raise ApiError(400, f"draft_rag has unknown keys {unknown}; expected some of {list(DRAFT_KEYS)}", "draft_rag")
    out = {"method": opts.get("method", cfg.method)}
    if out["method"] not in METHODS:
        raise ApiError(
            400, f"draft_rag.method must be one of {list(METHODS)}, got {out['method']!r}", "draft_rag.method"
        )
    if "budget" in opts or "ratio" in opts:
        out.update(budget=opts.get("budget"), ratio=opts.get("ratio"))
    else:
        out.update(budget=cfg.budget, ratio=cfg.ratio)
    out.update({k: opts[k] for k in ("pc_budget", "pc_ratio", "lookahead_tokens") if k in opts})
    return out


def sampling_options(body: dict, cfg: ServeConfig) -> dict:
    """Engine keyword arguments for decoding; greedy unless ``temperature`` is given."""
    if body.get("n", 1) != 1:
        raise ApiError(400, f"n must be 1 (one choice per request), got {body.get('n')!r}", "n")
    for key in ("logprobs", "tools", "functions"):
        if body.get(key):
            raise ApiError(400, f"{key} is not supported by a local target (a proxy to a server that has it can)", key)
    if (body.get("response_format") or {}).get("type", "text") != "text":
        raise ApiError(400, "response_format must be text for a local target", "response_format")
    out = {
        "max_new_tokens": max_tokens(body, cfg),
        "temperature": _number(body, "temperature", 0.0),
        "top_p": _number(body, "top_p", 1.0),
        "stop": body.get("stop") or (),
    }
    if body.get("seed") is not None:
        out["seed"] = body["seed"]
    return out


def max_tokens(body: dict, cfg: ServeConfig) -> int:
    """The request's ``max_completion_tokens``/``max_tokens`` within the server's limit (its default if absent)."""
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(key)
    value = min(cfg.default_max_tokens, cfg.max_tokens) if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cfg.max_tokens:
        raise ApiError(400, f"{key} must be an integer in [1, {cfg.max_tokens}], got {value!r}", key)
    return value


def _number(body: dict, key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"{key} must be a number, got {value!r}", key)
    return value


def chat_messages(body: dict) -> list:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a string role", f"messages[{i}]")
    return messages


def completion_prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "prompt must be a non-empty string (or a list of one string)", "prompt")
    for key in ("echo", "suffix"):
        if body.get(key):
            raise ApiError(400, f"{key} is not supported by a local target", key)
    if body.get("best_of", 1) != 1:
        raise ApiError(400, "best_of must be 1", "best_of")
    return prompt


# -- responses -----------------------------------------------------------------------------------
def draft_stats(stream) -> dict:
    """draft-rag's stats for the response: the engine's GenerationStats without per-head KV lists."""
    stats = {k: v for k, v in stream.stats.to_dict().items() if k != "kv_entries"}
    stats["seconds"] = {k: round(v, 4) for k, v in stats["seconds"].items()}
    return stats


def usage(stream) -> dict:
    s = stream.stats
    return {
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.new_tokens,
        "total_tokens": s.prompt_tokens + s.new_tokens,
    }


def sse(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


class _Reply:
    """Builds the OpenAI JSON objects of one response (chat or text completion)."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model, self.created = chat, model, int(time.time())
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.object = "chat.completion" if chat else "text_completion"

    def whole(self, text: str, stream) -> dict:
        choice = {"index": 0, "finish_reason": stream.stats.finish_reason, "logprobs": None}
        choice.update({"message": {"role": "assistant", "content": text}} if self.chat else {"text": text})
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage(stream),
            "draft_rag": draft_stats(stream),
        }

    def chunk(self, piece: str | None = None, finish: str | None = None, role: bool = False, **extra) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": piece} if piece is not None else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
        return {
            "id": self.id,
            "object": self.object + (".chunk" if self.chat else ""),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            **extra,
        }


# -- the app ---------------------------------------------------------------------------------------
class AccessLog:
    """ASGI middleware: one JSON log line per request (route, status, timings, token counts; never text)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, rid, seen = time.perf_counter(), uuid.uuid4().hex[:16], {"status": 500, "bytes": 0}
        scope.setdefault("state", {})

        async def send_logged(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                message["headers"] = list(message.get("headers", [])) + [(b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            client = scope.get("client") or ("", 0)
            record = {
                "request_id": rid,
                "client": client[0],
                "method": scope["method"],
                "path": scope["path"],
                "status": seen["status"],
                "bytes_out": seen["bytes"],
                "ms": round(1000 * (time.perf_counter() - t0), 1),
                **scope["state"].get("access", {}),
            }
            access_log.info(json.dumps(record))


def create_app(engine: DraftEngine, cfg: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app for ``engine``: local generation, or compression in front of ``cfg.upstream``."""
    cfg = cfg or ServeConfig()
    if cfg.upstream is None and engine.target is None:
        raise ValueError("a server without upstream needs an engine with a target model (DraftEngine(target=...))")
    queue = EngineQueue(cfg.max_queue, cfg.queue_timeout)
    state: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if cfg.upstream:
            headers = {"Authorization": f"Bearer {cfg.upstream_api_key}"} if cfg.upstream_api_key else {}
            state["upstream"] = httpx.AsyncClient(
                base_url=cfg.upstream, headers=headers, timeout=httpx.Timeout(30.0, read=None)
            )
        yield
        if "upstream" in state:
            await state["upstream"].aclose()

    async def authorize(request: Request) -> None:
        if cfg.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), cfg.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")

    app = FastAPI(title="draft-rag", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(AccessLog)
    app.add_exception_handler(ApiError, lambda request, exc: exc.response())
    app.add_exception_handler(HTTPException, lambda request, exc: ApiError(exc.status_code, str(exc.detail)).response())
    app.add_exception_handler(Exception, lambda request, exc: ApiError(500, "internal server error").response())
    auth = [Depends(authorize)]

    @app.get("/health")
    async def health():
        return {"status": "ok", "mode": "proxy" if cfg.upstream else "local", "queued": queue.admitted}

    @app.get("/v1/models", dependencies=auth)
    async def models():
        if cfg.upstream:
            return await forward("models", None, {})
        return {
            "object": "list",
            "data": [{"id": cfg.model_name, "object": "model", "created": 0, "owned_by": "draft-rag"}],
        }

    async def start(request: Request, **kwargs) -> EngineRun:
        """Wait for the engine, start the generation and decode its first piece (so bad input is a 400)."""
        await queue.acquire()
        run = None
        try:
            if await request.is_disconnected():  # gone while it waited: skip the work
                raise ApiError(400, "the client disconnected while queued", code="client_disconnected")
            run = EngineRun(engine.stream(**kwargs), queue)
            await run.start()
            return run
        except BaseException as exc:
            if run is None:
                queue.release()
            else:
                run.close()
            if isinstance(exc, (ValueError, TypeError)):
                raise ApiError(400, str(exc)) from None
            raise

    async def local(request: Request, chat: bool):
        body = await read_json(request, cfg.max_body_bytes)
        text_in = {"messages": chat_messages(body)} if chat else {"prompt": completion_prompt(body)}
        kwargs = {**text_in, **draft_options(body, cfg), **sampling_options(body, cfg)}
        run = await start(request, **kwargs)
        reply = _Reply(chat, cfg.model_name)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return ClosingStream(
                sse_pieces(run, reply, include_usage),
                on_close=closer(request, run),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        try:
            parts = [run.first or ""]
            while (piece := await run.next()) is not None:
                parts.append(piece)
                if await request.is_disconnected():
                    break
        finally:
            await closer(request, run)()
        return reply.whole("".join(parts), run.stream)

    def closer(request: Request, run: EngineRun):
        async def close():
            done = run.stream.stats.finish_reason != ""
            run.close()
            request.state.access = {
                "mode": "local",
                "draft_method": run.stream.stats.method,
                "original_tokens": run.stream.stats.original_tokens,
                "prompt_tokens": run.stream.stats.prompt_tokens,
                "completion_tokens": run.stream.stats.new_tokens,
                "finished": done,
            }

        return close

    async def sse_pieces(run: EngineRun, reply: _Reply, include_usage: bool):
        extra = {"usage": None} if include_usage else {}
        if reply.chat:
            yield sse(reply.chunk(role=True, **extra))
        piece = run.first
        try:
            while piece is not None:
                yield sse(reply.chunk(piece, **extra))
                piece = await run.next()
        except (ValueError, TypeError, RuntimeError) as exc:  # headers are sent: report in the stream
            yield sse({"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}})
            yield sse(b"[DONE]")
            return
        stats = draft_stats(run.stream)
        yield sse(reply.chunk(finish=run.stream.stats.finish_reason, draft_rag=stats, **extra))
        if include_usage:
            yield sse({**reply.chunk(), "choices": [], "usage": usage(run.stream), "draft_rag": stats})
        yield sse(b"[DONE]")

    # -- proxy -----------------------------------------------------------------------------------
    async def proxy_chat(request: Request):
        body = await read_json(request, cfg.max_body_bytes)
        messages = chat_messages(body)
        opts = draft_options(body, cfg)
        if body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None:
            max_tokens(body, cfg)  # the proxy's own limit; the upstream applies its default when none is given
        if opts["method"] not in ("specpc", "full"):
            raise ApiError(
                400,
                "in proxy mode draft_rag.method must be 'specpc' or 'full' (KV methods need a local target)",
                "draft_rag.method",
            )
        stats = {"method": opts["method"]}
        if opts["method"] == "specpc":
            await queue.acquire()
            try:
                cm = await queue.call(
                    lambda: engine.compress_messages(messages, budget=opts["budget"], ratio=opts["ratio"])
                )
            except (ValueError, TypeError) as exc:
                raise ApiError(400, str(exc)) from None
            finally:
                queue.release()
            body["messages"], stats = cm.messages, {**stats, **cm.stats}
        body.pop("draft_rag", None)
        request.state.access = {
            "mode": "proxy",
            "draft_method": opts["method"],
            **{k: stats.get(k) for k in ("original_tokens", "compressed_tokens")},
        }
        return await forward("chat/completions", body, stats)

    async def proxy_passthrough(request: Request):
        return await forward("completions", await read_json(request, cfg.max_body_bytes), {})

    async def forward(path: str, body: dict | None, stats: dict):
        """Send to the upstream; stream its answer back byte for byte (JSON answers get ``draft_rag`` added)."""
        client: httpx.AsyncClient = state["upstream"]
        req = client.build_request("POST" if body is not None else "GET", path, json=body)
        try:
            resp = await client.send(req, stream=True)
        except httpx.HTTPError as exc:
            raise ApiError(
                502, f"upstream {cfg.upstream} failed: {type(exc).__name__}: {exc}", code="upstream"
            ) from None
        headers = {STATS_HEADER: json.dumps(stats, separators=(",", ":"))} if stats else {}
        media = resp.headers.get("content-type", "application/json")
        if media.startswith("text/event-stream"):
            return ClosingStream(
                resp.aiter_bytes(),
                on_close=resp.aclose,
                status_code=resp.status_code,
                media_type=media,
                headers=headers,
            )
        try:
            content = await resp.aread()
        finally:
            await resp.aclose()
        if stats and resp.status_code == 200 and media.startswith("application/json"):
            with contextlib.suppress(ValueError):
                data = json.loads(content)
                if isinstance(data, dict):
                    content = json.dumps({**data, "draft_rag": stats}).encode()
        return Response(content, status_code=resp.status_code, media_type=media, headers=headers)

    if cfg.upstream:
        app.post("/v1/chat/completions", dependencies=auth)(proxy_chat)
        app.post("/v1/completions", dependencies=auth)(proxy_passthrough)
    else:

        async def chat_completions(request: Request):
            return await local(request, chat=True)

        async def completions(request: Request):
            return await local(request, chat=False)

        app.post("/v1/chat/completions", dependencies=auth)(chat_completions)
        app.post("/v1/completions", dependencies=auth)(completions)
    return app
