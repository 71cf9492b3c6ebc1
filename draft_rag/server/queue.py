"""One engine job at a time: a bounded queue of requests waiting for it, and a generation driven from the loop.

Every slot is released exactly once, whatever fails where: ``EngineQueue.slot`` is an async context manager,
and a streamed reply takes the slot over with ``Slot.hand_over`` (its ``EngineRun.close`` releases it).
"""

from __future__ import annotations

import asyncio
import contextlib

import anyio

from .errors import ApiError


class Slot:
    """The right to run on the engine; ``release`` is idempotent."""

    def __init__(self, queue: EngineQueue):
        self._queue, self.held, self.handed_over = queue, True, False

    def hand_over(self) -> Slot:
        """Keep the slot past the ``with`` block: its new owner releases it."""
        self.handed_over = True
        return self

    def release(self) -> None:
        if self.held:
            self.held = False
            self._queue._free()


class EngineQueue:
    """One engine job at a time; ``size`` more may wait (more get 429); a wait over ``timeout`` s gets 503.

    A waiting client that disconnects leaves the queue at once. Engine work runs in one worker thread at a
    time (``call``), so the model's memory stays in few allocator arenas.
    """

    def __init__(self, size: int, timeout: float):
        self.size, self.timeout, self.admitted = size, timeout, 0
        self._lock = asyncio.Lock()
        self._limiter: anyio.CapacityLimiter | None = None

    async def call(self, fn, *args):
        """``fn(*args)`` in a worker thread; a cancelled caller still waits for it, so work never half-runs."""
        self._limiter = self._limiter or anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    @contextlib.asynccontextmanager
    async def slot(self, disconnected=None):
        """Wait for the engine (``disconnected``: an async function that returns when the client is gone).

        Yields a ``Slot``; it is released when the block ends, unless handed over, and always on an error.
        """
        slot = await self._acquire(disconnected)
        try:
            yield slot
        except BaseException:
            slot.release()
            raise
        if not slot.handed_over:
            slot.release()

    async def _acquire(self, disconnected) -> Slot:
        if self.admitted > self.size:
            raise ApiError(
                429,
                f"the server is busy: {self.admitted} requests are running or queued; retry later",
                code="queue_full",
                retry_after=1,
            )
        self.admitted += 1
        got = asyncio.ensure_future(self._lock.acquire())
        gone = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        tasks = [t for t in (got, gone) if t is not None]
        try:
            await asyncio.wait(tasks, timeout=self.timeout, return_when="FIRST_COMPLETED")
        except BaseException:  # cancelled while waiting: give back whatever was got
            await self._settle(tasks)
            self._free() if _succeeded(got) else self._leave()
            raise
        await self._settle(tasks)
        if _succeeded(got):
            return Slot(self)
        self._leave()
        if gone is not None and _succeeded(gone):
            raise ApiError(400, "the client disconnected while queued", code="client_disconnected")
        raise ApiError(
            503, f"no engine slot within {self.timeout:g} s; retry later", code="queue_timeout", retry_after=1
        )

    @staticmethod
    async def _settle(tasks) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _leave(self) -> None:
        self.admitted -= 1

    def _free(self) -> None:
        self.admitted -= 1
        self._lock.release()


def _succeeded(task) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


class EngineRun:
    """A ``GenerationStream`` driven from the event loop: each piece is decoded in a worker thread.

    ``close`` stops the generation (its generator's ``finally`` frees the engine lock) and releases the slot.
    """

    def __init__(self, stream, queue: EngineQueue, slot: Slot):
        self.stream, self._pieces, self._queue, self._slot = stream, iter(stream), queue, slot
        self.first: str | None = None
        self.pieces = 0

    async def start(self) -> None:
        """Run up to the first piece: compression and prefill happen here, so their errors come before any reply."""
        self.first = await self.next()

    async def next(self) -> str | None:
        piece = await self._queue.call(next, self._pieces, None)
        self.pieces += piece is not None
        return piece

    def close(self) -> None:
        try:
            getattr(self._pieces, "close", lambda: None)()
        finally:
            self._slot.release()
