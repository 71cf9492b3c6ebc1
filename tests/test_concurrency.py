"""32 concurrent async requests on one engine: mixed methods and adapters, some cancelled midway."""

from __future__ import annotations

import asyncio
import threading

from conftest import CORPUS, tiny_model

from draft_rag import SpecPCConfig
from draft_rag.aio import iterate_in_thread
from draft_rag.engine import METHODS

CFG = SpecPCConfig(starting_layer_index=1, window_size=8, kernel_size=5, neighbor_tokens=4)
QUESTION = "What is the special magic number for ocean?"


def _requests(n: int = 32):
    """(kind, prompt, kwargs) for each request (engine streams, LangChain and LlamaIndex adapters)."""
    out = []
    for i in range(n):
        prompt = CORPUS[(37 * i) % 900 : (37 * i) % 900 + 300 + 20 * i]
        kind = "chat" if i % 8 == 3 else "llamaindex" if i % 8 == 5 else "engine"
        out.append((kind, prompt, dict(method=METHODS[i % len(METHODS)], budget=40 + i, max_new_tokens=6)))
    return out


async def test_32_concurrent_requests_finish_or_cancel_cleanly():
    from langchain_core.messages import HumanMessage

    from draft_rag.engine import shared_engine
    from langchain_draft_rag import ChatDraftCompressed
    from llama_index.llms.draft_rag import DraftCompressedLLM

    tiny = tiny_model("llama")
    engine = shared_engine(tiny, tiny, CFG)
    chat = {}
    llms = {}

    def make(kind, prompt, kw):
        """A factory of a blocking piece iterator and the sequential (greedy) result of the same request."""
        if kind == "engine":
            return (
                lambda: engine.stream(prompt, question=QUESTION, **kw),
                lambda: engine.generate(prompt, question=QUESTION, **kw).text,
            )
        if kind == "chat":
            model = chat.setdefault(
                kw["method"],
                ChatDraftCompressed(target=tiny, specpc=CFG, method=kw["method"], budget=kw["budget"], max_tokens=6),
            )
            msgs = [HumanMessage(prompt + "\n" + QUESTION)]
            return (lambda: (c.content for c in model.stream(msgs)), lambda: model.invoke(msgs).content)
        llm = llms.setdefault(
            kw["method"],
            DraftCompressedLLM(
                engine=engine, target=tiny, method=kw["method"], budget=kw["budget"], max_new_tokens=6, specpc=CFG
            ),
        )
        return (lambda: (r.delta for r in llm.stream_complete(prompt)), lambda: llm.complete(prompt).text)

    requests = [make(*r) for r in _requests()]
    expected = [sequential() for _, sequential in requests]

    first_piece = [asyncio.Event() for _ in requests]

    async def run(i, factory):
        pieces = []
        async for piece in iterate_in_thread(factory):
            pieces.append(piece or "")
            first_piece[i].set()
        return "".join(pieces)

    async def cancel_after_first_piece(i):
        await first_piece[i].wait()
        tasks[i].cancel()

    tasks = [asyncio.create_task(run(i, factory)) for i, (factory, _) in enumerate(requests)]
    watchers = [asyncio.create_task(cancel_after_first_piece(i)) for i in range(1, len(tasks), 4)]
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 300)
    for w in watchers:
        w.cancel()

    for i, (got, want) in enumerate(zip(results, expected)):
        if i % 4 == 1:  # cancelled after its first piece (or, rarely, finished before the cancel landed)
            assert isinstance(got, asyncio.CancelledError) or got == want, (i, got)
        else:
            assert got == want, (i, got, want)
    assert any(isinstance(r, asyncio.CancelledError) for r in results), "no request was cancelled midway"
    workers = [t for t in threading.enumerate() if t.name == "draft-rag-stream"]
    await asyncio.to_thread(lambda: [t.join(30) for t in workers])  # each closes after its current token
    assert not any(t.is_alive() for t in workers), "a worker thread was left running"
    assert await asyncio.wait_for(asyncio.to_thread(lambda: engine.generate("x", max_new_tokens=1).stats), 30)
