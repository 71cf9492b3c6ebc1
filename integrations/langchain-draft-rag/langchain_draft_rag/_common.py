"""Shared by the LangChain adapters: their settings, argument checks, shared engines, thread-backed async iteration."""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import Any, AsyncIterator, Callable, Iterator

from langchain_core.callbacks import AsyncCallbackManager, AsyncCallbackManagerForLLMRun, CallbackManager
from langchain_core.language_models import BaseChatModel, LangSmithParams
from pydantic import BaseModel, ConfigDict, PrivateAttr

from draft_rag import DraftEngine, SpecKVConfig, SpecPCConfig, load_model
from draft_rag import engine as _engine_module
from draft_rag.models import DEFAULT_MODEL, load_options

_engines: dict[tuple, DraftEngine] = {}
_engines_lock = threading.Lock()


def shared_engine(target: Any = None, draft: Any = None, specpc: SpecPCConfig | None = None,
                  speckv: SpecKVConfig | None = None, target_kwargs: dict | None = None,
                  draft_kwargs: dict | None = None) -> DraftEngine:
    """One ``DraftEngine`` per (target, draft, SpecPC and SpecKV settings), so adapters on the same models share it.

    ``target_kwargs`` / ``draft_kwargs`` are ``load_model`` options (``device_map``, ``dtype``, ``model_kwargs``, ...).
    """
    if specpc is not None and not isinstance(specpc, SpecPCConfig):
        raise TypeError(f"specpc must be a draft_rag.SpecPCConfig, got {type(specpc).__name__}")
    if speckv is not None and not isinstance(speckv, SpecKVConfig):
        raise TypeError(f"speckv must be a draft_rag.SpecKVConfig, got {type(speckv).__name__}")
    t_opts, d_opts = load_options(target_kwargs, "target_kwargs"), load_options(draft_kwargs, "draft_kwargs")
    t = load_model(target, **t_opts) if target is not None else None
    d = load_model(draft, **d_opts) if draft is not None else (t or load_model(DEFAULT_MODEL, **d_opts))
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


WRAPPED_METHODS = ("specpc", "full")

# Restated by each adapter class: LangChain's own base classes (extra="ignore") would otherwise win the merge.
CONFIG = ConfigDict(arbitrary_types_allowed=True, extra="forbid")


def check_wrapped_method(method: str) -> None:
    if method not in WRAPPED_METHODS:
        raise ValueError(f"method={method!r} needs a local target; with llm=... use one of {WRAPPED_METHODS}")


class DraftSettings(BaseModel):
    """The settings and checks ``ChatDraftCompressed`` and ``DraftCompressedLLM`` share (see the former's docs).

    Put it first among the bases (its ``_identifying_params`` and ``_get_ls_params`` override LangChain's),
    and restate ``model_config = CONFIG`` in the class.
    """

    target: Any = None
    llm: Any = None
    draft: Any = None
    method: str = "specpc"
    budget: int | None = None
    ratio: float | None = None
    pc_budget: int | None = None
    pc_ratio: float | None = None
    lookahead_tokens: int | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] | None = None
    timeout: float | None = None
    max_retries: int = 0
    streaming: bool = False
    template: str | None = None
    specpc: Any = None
    speckv: Any = None
    target_kwargs: dict | None = None
    draft_kwargs: dict | None = None

    model_config = CONFIG
    _engine: DraftEngine = PrivateAttr()

    def _check_settings(self, base: type, kind: str, base_name: str) -> None:
        """Validate the settings, normalise ``stop`` and pick the shared engine; ``llm`` must be a ``base``."""
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        if (self.target is None) == (self.llm is None):
            raise ValueError(f"give exactly one of target=... (a local model) or llm=... (a {kind})")
        if self.llm is not None and not isinstance(self.llm, base):
            raise TypeError(f"llm must be a {base_name}, got {type(self.llm).__name__}")
        check_method(self.method)
        if self.llm is not None:
            check_wrapped_method(self.method)
        check_budget(self.budget, self.ratio)
        check_budget(self.pc_budget, self.pc_ratio, "pc_")
        check_positive_int("max_tokens", self.max_tokens)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if self.template not in (None, "chat", "raw"):
            raise ValueError(f"template must be 'chat', 'raw' or None, got {self.template!r}")
        self.stop = stop_list(self.stop) or None
        self._engine = shared_engine(self.target, self.draft, self.specpc, self.speckv, self.target_kwargs,
                                     self.draft_kwargs)

    @property
    def model_name(self) -> str:
        if self.llm is not None:
            inner = getattr(self.llm, "model_name", None) or getattr(self.llm, "model", None)
            return inner if isinstance(inner, str) and inner else type(self.llm).__name__
        return self._engine.target.name

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "draft": self._engine.draft.name, "method": self.method,
                "budget": self.budget, "ratio": self.ratio, "pc_budget": self.pc_budget, "pc_ratio": self.pc_ratio,
                "max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "seed": self.seed, "stop": self.stop, "template": self.template,
                "lookahead_tokens": self.lookahead_tokens, "specpc": dataclasses.asdict(self._engine.specpc),
                "speckv": dataclasses.asdict(self._engine.speckv), "target_kwargs": self.target_kwargs,
                "draft_kwargs": self.draft_kwargs}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        model_type = "chat" if isinstance(self, BaseChatModel) else "llm"
        params = LangSmithParams(ls_provider="draft_rag", ls_model_type=model_type,
                                 ls_model_name=kwargs.get("model") or self.model_name,
                                 ls_temperature=kwargs.get("temperature", self.temperature),
                                 ls_max_tokens=kwargs.get("max_tokens", self.max_tokens))
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def _call_options(self, stop, kwargs: dict, names: tuple[str, ...], also_known: tuple[str, ...] = ()) -> dict:
        """Per-call ``names`` over the instance's settings, checked; plus ``given``, ``stop`` and ``extra``.

        Other kwargs (``ls_*`` aside) are passed to a wrapped model in ``extra``; a local target rejects them
        unless they are in ``also_known``.
        """
        unknown = [k for k in kwargs if k not in names and k not in also_known and not k.startswith("ls_")]
        if unknown and self.llm is None:
            raise TypeError(f"unexpected keyword arguments {unknown}; accepted per call: {names}")
        o = {k: kwargs.get(k, getattr(self, k, None)) for k in names}
        if "budget" in kwargs or "ratio" in kwargs:
            o["budget"], o["ratio"] = kwargs.get("budget"), kwargs.get("ratio")
        check_budget(o["budget"], o["ratio"])
        check_method(o["method"])
        if self.llm is not None:
            check_wrapped_method(o["method"])
        o["given"] = set(kwargs)
        o["stop"] = stop_list(stop if stop is not None else self.stop)
        o["extra"] = {k: v for k, v in kwargs.items() if k not in names and not k.startswith("ls_")}
        return o


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


async def astream_in_thread(make_iter: Callable[[], Iterator], run_manager) -> AsyncIterator:
    """``iterate_in_thread``, reporting each chunk to the async ``run_manager`` (if any) as a new token."""
    async for chunk in iterate_in_thread(make_iter):
        if run_manager:
            await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
        yield chunk


def emit(chunk, run_manager):
    """Report ``chunk`` to the sync ``run_manager`` (if any) as a new token; return it."""
    if run_manager:
        run_manager.on_llm_new_token(chunk.text, chunk=chunk)
    return chunk
