"""Proxy mode: SpecPC on each chat request's retrieved context, then an OpenAI-compatible upstream answers.

The upstream's answer comes back unchanged (JSON answers get ``draft_rag`` stats added), with its headers less the
hop-by-hop ones. Its failures are named by host only, never by URL, so credentials in ``upstream`` never reach a
client.
"""

from __future__ import annotations

import json

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response

from .. import methods
from .errors import ApiError
from .local import ClosingStream, bad_input, error_event, wait_disconnect
from .schema import ChatRequest, CompletionRequest, parse, read_json

PROXY_METHODS = methods.REMOTE_NAMES  # a remote target reads text: KV methods need a local one
STATS_HEADER = "x-draft-rag-stats"
# RFC 9110 7.6.1: headers for one connection only, never forwarded
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer"}
    | {"transfer-encoding", "upgrade"}
)
# set by this server for the body it sends (httpx has decoded any content-encoding) and its own connection
OWN_HEADERS = frozenset({"content-length", "content-encoding", "content-type", "date", "server", STATS_HEADER})
router = APIRouter()


@router.get("/v1/models")
async def models(request: Request):
    return await forward(request, "models", None, {})


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    state = request.app.state
    body = await read_json(request, state.cfg.max_body_bytes, state.cfg.body_timeout)
    req = parse(ChatRequest, body)
    opts = req.draft()
    method = opts.method or state.cfg.method
    if method not in PROXY_METHODS:
        raise ApiError(
            400,
            f"in proxy mode draft_rag.method must be one of {list(PROXY_METHODS)} (KV methods need a local target)",
            "draft_rag.method",
        )
    if opts.sparse_prefill:
        raise ApiError(
            400, "draft_rag.sparse_prefill needs a local target; the upstream prefills", "draft_rag.sparse_prefill"
        )
    req.completion_limit(state.cfg.max_tokens)  # the upstream applies its own default when none is given
    stats = {"method": method}
    if methods.get(method).shortens_prompt:
        budget, ratio = opts.budgets(state.cfg.budget, state.cfg.ratio)
        async with state.queue.slot(lambda: wait_disconnect(request)):
            with bad_input():
                compressed_chat = await state.queue.call(
                    lambda: state.engine.compress_messages(body["messages"], budget=budget, ratio=ratio)
                )
        body["messages"], stats = compressed_chat.messages, {**stats, **compressed_chat.stats.to_dict()}
    body.pop("draft_rag", None)
    request.state.access = {
        "mode": "proxy",
        "draft_method": method,
        **{k: stats.get(k) for k in ("original_tokens", "compressed_tokens")},
    }
    return await forward(request, "chat/completions", body, stats)


@router.post("/v1/completions")
async def completions(request: Request):
    cfg = request.app.state.cfg
    body = await read_json(request, cfg.max_body_bytes, cfg.body_timeout)
    parse(CompletionRequest, body)
    return await forward(request, "completions", body, {})


def upstream_host(url: str) -> str:
    """``host:port`` of an upstream URL, without scheme, credentials or path."""
    u = httpx.URL(url)
    return f"{u.host}:{u.port}" if u.port else u.host


def upstream_error(exc: httpx.HTTPError, host: str) -> ApiError:
    if isinstance(exc, httpx.TimeoutException):
        return ApiError(504, f"upstream {host} did not answer in time ({type(exc).__name__})", code="upstream_timeout")
    return ApiError(502, f"upstream {host} failed: {type(exc).__name__}", code="upstream")


async def forward(request: Request, path: str, body: dict | None, stats: dict):
    """Send to the upstream; stream its answer back (JSON answers get ``draft_rag`` added)."""
    client: httpx.AsyncClient = request.app.state.upstream
    host = upstream_host(request.app.state.cfg.upstream)
    req = client.build_request("POST" if body is not None else "GET", path, json=body)
    try:
        resp = await client.send(req, stream=True)
    except httpx.HTTPError as exc:
        raise upstream_error(exc, host) from None
    headers = {STATS_HEADER: json.dumps(stats, separators=(",", ":"))} if stats else {}
    media = resp.headers.get("content-type", "application/json")
    if media.startswith("text/event-stream"):
        out = ClosingStream(
            relay(resp, host), on_close=resp.aclose, status_code=resp.status_code, media_type=media, headers=headers
        )
        out.raw_headers.extend(passed_headers(resp.headers))
        return out
    try:
        content = await resp.aread()
    except httpx.HTTPError as exc:
        raise upstream_error(exc, host) from None
    finally:
        await resp.aclose()
    if stats and resp.status_code == 200 and media.startswith("application/json"):
        try:
            data = json.loads(content)
        except ValueError:
            data = None
        if isinstance(data, dict):
            content = json.dumps({**data, "draft_rag": stats}).encode()
    out = Response(content, status_code=resp.status_code, media_type=media, headers=headers)
    out.raw_headers.extend(passed_headers(resp.headers))
    return out


def passed_headers(headers: httpx.Headers) -> list[tuple[bytes, bytes]]:
    """The upstream's headers to send on (repeats kept): all but hop-by-hop ones, those its ``Connection`` names,
    and those this server sets itself."""
    named = {h.strip().lower() for h in headers.get("connection", "").split(",")}
    drop = HOP_BY_HOP | OWN_HEADERS | named
    return [(k, v) for k, v in headers.raw if k.decode("latin-1").lower() not in drop]


async def relay(resp: httpx.Response, host: str):
    """The upstream's server-sent events, whole events only; if it fails midway, an error event and ``[DONE]``."""
    pending = b""
    try:
        async for part in resp.aiter_bytes():
            pending += part
            cut = max((i + len(sep) for sep in (b"\n\n", b"\r\n\r\n") if (i := pending.rfind(sep)) >= 0), default=0)
            if cut:
                yield pending[:cut]
                pending = pending[cut:]
    except httpx.HTTPError as exc:
        err = upstream_error(exc, host)
        yield error_event(err.message, err.code, err.TYPES[err.status])
        return
    if pending:
        yield pending
