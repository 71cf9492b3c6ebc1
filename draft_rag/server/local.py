"""Local mode: ``/v1/chat/completions`` and ``/v1/completions`` answered by the engine's own target."""

from __future__ import annotations

import contextlib
import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..messages import split_text
from ..options import GenerationOptions
from .errors import ApiError
from .queue import EngineRun
from .schema import ChatRequest, CompletionRequest, parse, read_json

router = APIRouter()


@router.get("/v1/models")
async def models(request: Request):
    name = request.app.state.cfg.model_name
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "draft-rag"}]}


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    cfg = request.app.state.cfg
    body = await read_json(request, cfg.max_body_bytes, cfg.body_timeout)
    req = parse(ChatRequest, body)
    unsupported(req, ("logprobs", "tools", "functions"))
    if req.response_format is not None and req.response_format.type != "text":
        raise ApiError(400, "response_format must be text for a local target", "response_format")
    return await answer(request, req, {"messages": body["messages"]})


@router.post("/v1/completions")
async def completions(request: Request):
    cfg = request.app.state.cfg
    req = parse(CompletionRequest, await read_json(request, cfg.max_body_bytes, cfg.body_timeout))
    unsupported(req, ("echo", "suffix"))
    if req.logprobs is not None:
        raise ApiError(400, "logprobs is not supported by a local target", "logprobs")
    return await answer(request, req, raw_prompt(req.text()))


def unsupported(req, fields) -> None:
    for name in fields:
        if getattr(req, name):
            raise ApiError(
                400, f"{name} is not supported by a local target (a proxy to a server that has it can)", name
            )


def raw_prompt(text: str) -> dict:
    """A text completion continues ``text`` as is (no chat template); its last paragraph or sentence, the part
    the continuation follows from, is protected from compression."""
    tail = len(text)
    for start, _, protected in reversed(split_text(text, question_last=True)):
        if not protected:
            break
        tail = start
    return {"prompt": text[:tail] or None, "answer_prefix": text[tail:] or None, "template": "raw"}


def engine_options(req, cfg) -> GenerationOptions:
    """The engine's options for ``req``: compression (its ``draft_rag`` or the server's) and decoding."""
    opts = req.draft()
    if (req.n or 1) != 1:
        raise ApiError(400, f"n must be 1 (one choice per request), got {req.n}", "n")
    value = req.completion_limit(cfg.max_tokens)
    budget, ratio = opts.budgets(cfg.budget, cfg.ratio)
    return GenerationOptions(
        method=opts.method or cfg.method,
        budget=budget,
        ratio=ratio,
        pc_budget=opts.pc_budget,
        pc_ratio=opts.pc_ratio,
        lookahead_tokens=opts.lookahead_tokens,
        sparse_prefill=opts.sparse_prefill,
        max_new_tokens=value or min(cfg.default_max_tokens, cfg.max_tokens),
        temperature=req.temperature if req.temperature is not None else 0.0,
        top_p=req.top_p if req.top_p is not None else 1.0,
        stop=tuple(req.stop_list()),
        seed=req.seed,
    )


@contextlib.contextmanager
def bad_input():
    """The engine's ValueError/TypeError (a request it cannot serve) as a 400."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        raise ApiError(400, str(exc)) from None


async def wait_disconnect(request: Request) -> None:
    """Return once the client has gone (the body is read by then, so only ``http.disconnect`` can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def answer(request: Request, req, text_in: dict):
    """Wait for the engine, decode the first piece (so bad input is a 400), then reply whole or streamed."""
    state = request.app.state
    with bad_input():
        options = engine_options(req, state.cfg)
    reply = Reply("messages" in text_in, state.cfg.model_name)
    async with state.queue.slot(lambda: wait_disconnect(request)) as slot:
        with bad_input():
            run = EngineRun(state.engine.stream(options=options, **text_in), state.queue, slot)
        try:
            with bad_input():
                await run.start()
        except BaseException:
            run.close()
            raise
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            slot.hand_over()
            return ClosingStream(
                sse_pieces(run, reply, include_usage),
                on_close=finish(request, run),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        try:
            parts = [run.first or ""]
            while not await request.is_disconnected() and (piece := await run.next()) is not None:
                parts.append(piece)
        finally:
            await finish(request, run)()
        return reply.whole("".join(parts), run.stream)


def finish(request: Request, run: EngineRun):
    """Stop the run, free its slot and put its counts in the access log."""

    async def close():
        stats = run.stream.stats
        done = stats.finish_reason != ""
        run.close()
        request.state.access = {
            "mode": "local",
            "draft_method": stats.method,
            "original_tokens": stats.original_tokens,
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.new_tokens,
            "finished": done,
        }

    return close


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


def sse(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


def error_event(message: str, code: str | None = None, kind: str = "server_error") -> bytes:
    """An error inside a stream whose headers are sent, then ``[DONE]``: what OpenAI's clients expect."""
    return sse({"error": {"message": message, "type": kind, "param": None, "code": code}}) + sse(b"[DONE]")


async def sse_pieces(run: EngineRun, reply: Reply, include_usage: bool):
    extra = {"usage": None} if include_usage else {}
    if reply.chat:
        yield sse(reply.chunk(role=True, **extra))
    piece = run.first
    try:
        while piece is not None:
            yield sse(reply.chunk(piece, **extra))
            piece = await run.next()
    except Exception as exc:  # noqa: BLE001 - headers are sent: the error goes in the stream
        kind = "invalid_request_error" if isinstance(exc, (ValueError, TypeError)) else "server_error"
        yield error_event(str(exc) if kind != "server_error" else "internal error while generating", kind=kind)
        return
    stats = draft_stats(run.stream)
    yield sse(reply.chunk(finish=run.stream.stats.finish_reason, draft_rag=stats, **extra))
    if include_usage:
        yield sse({**reply.chunk(), "choices": [], "usage": usage(run.stream), "draft_rag": stats})
    yield sse(b"[DONE]")


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


class Reply:
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
