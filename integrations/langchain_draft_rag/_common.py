"""Helpers shared by the LangChain adapters: argument checks, shared engines, thread-backed async iteration."""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, AsyncIterator, Callable, Iterator

from langchain_core.callbacks import AsyncCallbackManager, AsyncCallbackManagerForLLMRun, CallbackManager

from draft_rag import DraftEngine, SpecKVConfig, SpecPCConfig, load_model
from draft_rag import engine as _engine_module
from draft_rag.models import DEFAULT_MODEL

_engines: dict[tuple, DraftEngine] = {}
_engines_lock = threading.Lock()


def shared_engine(target: Any = None, draft: Any = None, specpc: SpecPCConfig | None = None,
                  speckv: SpecKVConfig | None = None) -> DraftEngine:
    """One ``DraftEngine`` per (target, draft, SpecPC and SpecKV settings), so adapters on the same models share it."""
    if specpc is not None and not isinstance(specpc, SpecPCConfig):
        raise TypeError(f"specpc must be a draft_rag.SpecPCConfig, got {type(specpc).__name__}")
    if speckv is not None and not isinstance(speckv, SpecKVConfig):
        raise TypeError(f"speckv must be a draft_rag.SpecKVConfig, got {type(speckv).__name__}")
    t = load_model(target) if target is not None else None
    d = load_model(draft) if draft is not None else (t or load_model(DEFAULT_MODEL))
    key = (id(t), id(d), specpc, speckv)
    with _engines_lock:
        if key not in _engines:
            _engines[key] = DraftEngine(t, d, specpc=specpc, speckv=speckv)
        return _engines[key]


def methods() -> tuple[str, ...]:
    """The engine's methods, read at call time so methods added to the core are accepted."""
    return tuple(_engine_module.METHODS)


def check_method(method: str) -> None:
    if method not in methods():
        raise ValueError(f"method must be one of {methods()}, got {method!r}")


def check_budget(budget: Any, ratio: Any, prefix: str = "") -> None:
    b, r = prefix + "budget", prefix + "ratio"
    if budget is not None and ratio is not None:
        raise ValueError(f"give either {b} (tokens) or {r} (a fraction), not both")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ValueError(f"{b} must be a positive integer number of tokens, got {budget!r}")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1):
        raise ValueError(f"{r} must be a number in (0, 1], got {ratio!r}")


def check_positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def child_config(run_manager) -> dict | None:
    """A config that nests the wrapped model's run under this LLM run, with its handlers, tags and metadata."""
    if run_manager is None:
        return None
    cls = AsyncCallbackManager if isinstance(run_manager, AsyncCallbackManagerForLLMRun) else CallbackManager
    manager = cls(handlers=run_manager.inheritable_handlers, inheritable_handlers=run_manager.inheritable_handlers,
                  parent_run_id=run_manager.run_id, tags=run_manager.inheritable_tags,
                  inheritable_tags=run_manager.inheritable_tags, metadata=run_manager.inheritable_metadata,
                  inheritable_metadata=run_manager.inheritable_metadata)
    return {"callbacks": manager}


def stop_list(stop: Any) -> list[str]:
    """Normalise LangChain's ``stop`` (None, a string or a list of strings)."""
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else list(stop)
    if any(not isinstance(s, str) or not s for s in stop):
        raise ValueError(f"stop must be a list of non-empty strings, got {stop!r}")
    return stop


def with_deadline(pieces: Iterator[str], timeout: float | None) -> Iterator[str]:
    """Pass pieces through; raise ``TimeoutError`` once ``timeout`` seconds have passed (checked per piece)."""
    if timeout is None:
        yield from pieces
        return
    deadline = time.monotonic() + timeout
    try:
        for piece in pieces:
            yield piece
            if time.monotonic() > deadline:
                raise TimeoutError(f"generation took longer than timeout={timeout} seconds")
    finally:
        close = getattr(pieces, "close", None)
        if close:
            close()


_DONE = object()


async def iterate_in_thread(make_iter: Callable[[], Iterator]) -> AsyncIterator:
    """Run a blocking iterator in one dedicated thread and yield its items without blocking the event loop.

    One thread for the whole iteration matters: the engine's stream holds a lock from its first to its
    last item, and a lock must be released by the thread that took it.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancelled = threading.Event()

    def put(item) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        it = None
        try:
            it = make_iter()
            for item in it:
                if cancelled.is_set():
                    break
                put((item, None))
        except BaseException as e:  # handed to the consumer
            put((None, e))
        finally:
            close = getattr(it, "close", None)
            if close:
                close()
            put((_DONE, None))

    thread = threading.Thread(target=work, name="draft-rag-stream", daemon=True)
    thread.start()
    try:
        while True:
            item, error = await queue.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        cancelled.set()
