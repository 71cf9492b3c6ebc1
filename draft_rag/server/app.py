"""The FastAPI app: its settings, the access log, authentication and the routers of its mode.

Local mode answers ``/v1/chat/completions`` and ``/v1/completions`` with the engine's target (``local``); proxy
mode (``upstream`` set) compresses each chat request's retrieved context and forwards it to an OpenAI-compatible
upstream (``proxy``). Per request, ``"draft_rag": {"method": ..., "budget" | "ratio": ...}`` overrides the
server's compression. Engine, settings, queue and upstream client live on ``app.state``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass

import httpx
from fastapi import Depends, FastAPI, Request
from starlette.exceptions import HTTPException

from .. import methods
from ..engine import DraftEngine
from . import local, proxy
from .errors import ApiError
from .queue import EngineQueue

access_log = logging.getLogger("draft_rag.access")
logger = logging.getLogger("draft_rag.server")


@dataclass
class ServeConfig:
    """What the server serves and its limits (seconds for the timeouts)."""

    method: str = "specpc"  # default compression; a request's ``draft_rag`` field overrides it
    budget: int | str | None = None
    ratio: float | None = None
    model_name: str = "draft-rag"  # the id /v1/models lists and responses carry
    api_key: str | None = None  # when set, /v1/* need ``Authorization: Bearer <api_key>``
    upstream: str | None = None  # proxy mode: base URL of an OpenAI-compatible server, e.g. http://host:8000/v1
    upstream_api_key: str | None = None
    upstream_timeout: float = 300.0  # the longest silence from the upstream (before and between bytes): 504
    upstream_connect_timeout: float = 10.0
    max_body_bytes: int = 4_000_000
    body_timeout: float = 30.0  # a request body that takes longer to arrive gets 408
    max_tokens: int = 2048  # the most completion tokens a request may ask for
    default_max_tokens: int = 256  # when a request names none (capped at max_tokens)
    max_queue: int = 8  # requests that may wait for the engine beside the one it runs; more get 429
    queue_timeout: float = 60.0  # a request that waits longer for the engine gets 503

    def __post_init__(self):
        methods.get(self.method)
        for name in ("max_body_bytes", "max_tokens", "default_max_tokens"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("upstream_timeout", "upstream_connect_timeout", "body_timeout", "queue_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.api_key is not None and not (isinstance(self.api_key, str) and self.api_key.strip()):
            raise ValueError("api_key must be a non-empty string (or None for an open server)")
        if not _is_int(self.max_queue) or self.max_queue < 0:
            raise ValueError(f"max_queue must be an integer >= 0, got {self.max_queue!r}")
        if self.upstream and self.method not in proxy.PROXY_METHODS:
            raise ValueError(
                f"with upstream (proxy mode) method must be one of {proxy.PROXY_METHODS}, got {self.method!r}"
            )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class AccessLog:
    """ASGI middleware: one JSON log line per request (route, status, bytes, timings, token counts; never text).

    An exception that reaches it becomes a 500 in OpenAI's format (or ends a started response) and goes no
    further, so the connection stays usable.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, seen = time.perf_counter(), {"status": 0, "bytes": 0, "rid": uuid.uuid4().hex[:16]}
        scope.setdefault("state", {})

        async def send_logged(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                message["headers"] = with_request_id(list(message.get("headers", [])), seen)
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        except Exception:  # noqa: BLE001 - the last line of defence: log it, answer 500, keep the server up
            logger.exception("request %s failed", seen["rid"])
            if not seen["status"]:
                await ApiError(500, "internal server error").response()(scope, receive, send_logged)
        finally:
            client = scope.get("client") or ("", 0)
            record = {
                "request_id": seen["rid"],
                "client": client[0],
                "method": scope["method"],
                "path": scope["path"],
                "status": seen["status"] or 500,
                "bytes_out": seen["bytes"],
                "ms": round(1000 * (time.perf_counter() - t0), 1),
                **scope["state"].get("access", {}),
            }
            access_log.info(json.dumps(record))


def with_request_id(headers: list, seen: dict) -> list:
    """``headers`` with one ``x-request-id``: a proxied upstream's own (then logged as the request's id) or ours."""
    theirs = [v for k, v in headers if k.lower() == b"x-request-id"]
    if theirs:
        seen["rid"] = theirs[0].decode("latin-1")
        return headers
    return headers + [(b"x-request-id", seen["rid"].encode())]


async def authorize(request: Request) -> None:
    key = request.app.state.cfg.api_key
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    cfg = app.state.cfg
    if cfg.upstream:
        headers = {"Authorization": f"Bearer {cfg.upstream_api_key}"} if cfg.upstream_api_key else {}
        timeout = httpx.Timeout(cfg.upstream_timeout, connect=cfg.upstream_connect_timeout)
        app.state.upstream = httpx.AsyncClient(base_url=cfg.upstream, headers=headers, timeout=timeout)
    yield
    if cfg.upstream:
        await app.state.upstream.aclose()


def http_error(request: Request, exc: HTTPException):
    response = ApiError(exc.status_code, str(exc.detail)).response()
    response.headers.update(exc.headers or {})
    return response


def create_app(engine: DraftEngine, cfg: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app for ``engine``: local generation, or compression in front of ``cfg.upstream``."""
    cfg = cfg or ServeConfig()
    if cfg.upstream is None and engine.target is None:
        raise ValueError("a server without upstream needs an engine with a target model (DraftEngine(target=...))")
    app = FastAPI(title="draft-rag", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.cfg = engine, cfg
    app.state.queue = EngineQueue(cfg.max_queue, cfg.queue_timeout)
    app.add_middleware(AccessLog)
    app.add_exception_handler(ApiError, lambda request, exc: exc.response())
    app.add_exception_handler(HTTPException, http_error)

    @app.get("/health")
    async def health():
        return {"status": "ok", "mode": "proxy" if cfg.upstream else "local", "queued": app.state.queue.admitted}

    app.include_router((proxy if cfg.upstream else local).router, dependencies=[Depends(authorize)])
    return app
