"""draft_rag.aio.iterate_in_thread: errors reach the consumer, early stops close the iterator, closed loops are
left alone."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from draft_rag.aio import iterate_in_thread


class Counting:
    """An iterator that records whether it was closed."""

    def __init__(self, n: int, fail_at: int | None = None, delay: float = 0.0):
        self.n, self.fail_at, self.delay, self.closed, self.i = n, fail_at, delay, threading.Event(), 0
        self.produced = threading.Event()  # set once the first item is out

    def __iter__(self):
        return self

    def __next__(self):
        time.sleep(self.delay)
        if self.i == self.fail_at:
            raise ValueError("boom")
        if self.i >= self.n:
            raise StopIteration
        self.i += 1
        self.produced.set()
        return self.i

    def close(self):
        self.closed.set()


def join_workers(seconds: float = 10) -> None:
    """Wait for every worker thread of ``iterate_in_thread`` to end (their errors are reported by then)."""
    for t in threading.enumerate():
        if t.name == "draft-rag-stream":
            t.join(seconds)
            assert not t.is_alive(), "a worker thread did not end"


@pytest.fixture
def thread_errors():
    """Exceptions raised in any thread during the test."""
    seen, old = [], threading.excepthook
    threading.excepthook = lambda args: seen.append(args.exc_value)
    yield seen
    threading.excepthook = old


async def test_items_and_error():
    assert [x async for x in iterate_in_thread(lambda: Counting(3))] == [1, 2, 3]
    with pytest.raises(ValueError, match="boom"):
        async for _ in iterate_in_thread(lambda: Counting(5, fail_at=2)):
            pass
    with pytest.raises(TypeError):
        async for _ in iterate_in_thread(lambda: None):
            pass


async def test_break_and_cancel_close_the_iterator():
    it = Counting(1000, delay=0.001)
    async for x in iterate_in_thread(lambda: it):
        if x == 3:
            break
    assert await asyncio.to_thread(it.closed.wait, 5)

    slow = Counting(1000, delay=0.01)

    async def consume():
        async for _ in iterate_in_thread(lambda: slow):
            pass

    task = asyncio.create_task(consume())
    assert await asyncio.to_thread(slow.produced.wait, 5)  # the worker is iterating
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(slow.closed.wait, 5)
    assert slow.i < 1000


def test_loop_closed_while_worker_runs(thread_errors):
    slow = Counting(30, delay=0.01)

    async def first_then_raise():
        async for _ in iterate_in_thread(lambda: slow):
            raise RuntimeError("consumer failed")

    with pytest.raises(RuntimeError, match="consumer failed"):
        asyncio.run(first_then_raise())
    assert slow.closed.wait(5)
    join_workers()
    assert thread_errors == []


def test_adapter_ainvoke_that_raises_leaves_no_thread_error(thread_errors):
    from conftest import tiny_model
    from langchain_core.messages import HumanMessage

    from langchain_draft_rag import ChatDraftCompressed

    chat = ChatDraftCompressed(target=tiny_model("llama"), max_tokens=2)
    image = HumanMessage([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])
    with pytest.raises(ValueError, match="non-text parts"):  # raised inside the worker thread
        asyncio.run(chat.ainvoke([image]))
    join_workers()
    assert thread_errors == []
