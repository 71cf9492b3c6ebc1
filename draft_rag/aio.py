"""The async bridge both adapters use: a blocking iterator (an engine stream) run in a worker thread."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterator


async def iterate_in_thread(make_iter: Callable[[], Iterator]) -> AsyncIterator:
    """Yield the items of ``make_iter()`` without blocking the event loop.

    The iterator is made and run in one worker thread, in a copy of the caller's context (callbacks and
    tracing spans see the caller's context variables). Its error is raised here. When the consumer stops
    early (``break``, ``aclose``, cancellation, its own error) the worker closes the iterator after the item
    it is computing, which frees the engine. The worker never calls into a closed event loop.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def put(done: bool, value) -> None:
        if stop.is_set():
            return
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (done, value))
        except RuntimeError:  # the loop has closed: nobody is listening any more
            stop.set()

    def work() -> None:
        items = None
        try:
            items = iter(make_iter())
            for item in items:
                put(False, item)
                if stop.is_set():
                    break
        except BaseException as exc:  # handed to the consumer
            put(True, exc)
        else:
            put(True, None)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(work,), name="draft-rag-stream", daemon=True).start()
    try:
        while True:
            done, value = await queue.get()
            if done:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()
