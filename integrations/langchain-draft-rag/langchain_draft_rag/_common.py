"""Shared by the LangChain adapters: their settings, argument checks, shared engines, thread-backed async iteration."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any, Literal, Optional, Union

from langchain_core.callbacks import AsyncCallbackManager, AsyncCallbackManagerForLLMRun, CallbackManager
from langchain_core.language_models import BaseChatModel, LangSmithParams
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, SecretStr

from draft_rag import DraftEngine, methods
from draft_rag.aio import iterate_in_thread
from draft_rag.config import ASSUMED_WINDOW, wrapped_budget
from draft_rag.config import Budget as _Budget
from draft_rag.engine import DEFAULT_CONTEXT_CACHE_MB, shared_engine

logger = logging.getLogger(__name__)
SENT_WHOLE = "method='full': the prompt is sent whole"


def check_budget(budget: Any, ratio: Any, prefix: str = "") -> None:
    """``budget`` tokens (or ``"auto"`` / ``"adaptive"``, not for ``pc_budget``) or ``ratio``."""
    _Budget.parse(budget, ratio, prefix, allow_auto=not prefix)


Budget = Optional[Annotated[int, Field(ge=1, strict=True)]]  # a token budget field (None: the default)
Ratio = Optional[Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]]  # a budget as a fraction


# Restated by each adapter class: LangChain's own base classes (extra="ignore") would otherwise win the merge.
CONFIG = ConfigDict(arbitrary_types_allowed=True, extra="forbid", use_attribute_docstrings=True)


def check_wrapped_method(method: str) -> None:
    if not methods.get(method).works_remote:
        raise ValueError(f"method={method!r} needs a local target; with llm=... use one of {methods.REMOTE_NAMES}")


class DraftSettings(BaseModel):
    """The settings and checks ``ChatDraftCompressed`` and ``DraftCompressedLLM`` share (see the former's docs).

    Put it first among the bases (its ``_identifying_params`` and ``_get_ls_params`` override LangChain's),
    and restate ``model_config = CONFIG`` in the class.
    """

    target: Any = Field(None, validation_alias=AliasChoices("target", "model"))
    """Local target model (anything ``draft_rag.load_model`` accepts; also as ``model=``). Give this or ``llm``."""
    llm: Any = None
    """A LangChain model to send the compressed prompt to. Give this or ``target``."""
    draft: Any = None
    """The draft model; defaults to the target itself, or to the built-in SmolLM2 with ``llm``."""
    method: str = "specpc"
    """A name in ``draft_rag.engine.METHODS`` ("full": no compression); with ``llm`` only "specpc" or "full"."""
    budget: Optional[Union[Annotated[int, Field(ge=1, strict=True)], Literal["auto", "adaptive"]]] = None
    """The method's budget: draft tokens of prompt kept for "specpc" ("auto", also what no budget means: fit the
    context window; "adaptive": as many as the draft's attention needs, within that window), KV entries kept per
    layer and KV head for the KV methods."""
    context_window: Optional[Annotated[int, Field(ge=1, strict=True)]] = None
    """Tokens the compressed prompt must fit ("auto" / no budget). Default: the local target's window, or the wrapped
    chat model's ``profile["max_input_tokens"]``, else ``draft_rag.config.ASSUMED_WINDOW`` (32768, logged once)."""
    ratio: Ratio = None
    """Instead of ``budget``: the fraction of the retrieved context KEPT, in (0, 1] (0.25 keeps a quarter; kvpress's
    ``compression_ratio`` is the fraction removed). KV methods: the fraction of the prompt's KV entries kept."""
    pc_budget: Budget = None
    """speckv-pc: SpecPC's prompt budget in draft tokens (default 2048)."""
    pc_ratio: Ratio = None
    """speckv-pc: SpecPC's prompt budget as a fraction of the prompt."""
    lookahead_tokens: Optional[Annotated[int, Field(ge=0, strict=True)]] = None
    """Draft tokens generated as SpecKV's lookahead (default: ``max_tokens``)."""
    sparse_prefill: Optional[bool] = Field(None, strict=True)
    """True: the local target prefills long prompts vertical-slash sparse with ``SparsePrefillConfig()``'s settings
    (the paper's); a bool, not a config. Local targets only."""
    max_tokens: int = Field(256, ge=1, strict=True)
    """Most new tokens to generate."""
    temperature: float = Field(0.0, ge=0, allow_inf_nan=False)
    """Sampling temperature; 0 is greedy."""
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    """Nucleus sampling: keep the most likely tokens up to this probability mass, in (0, 1]."""
    top_k: int = Field(0, ge=0, strict=True)
    """Sample among the k most likely tokens; 0 means no limit."""
    seed: Optional[int] = Field(None, strict=True)
    """Seed for sampling (temperature > 0)."""
    stop: Optional[list[str]] = None
    """Strings that end the generation (not included in the output)."""
    timeout: Optional[float] = Field(None, gt=0, allow_inf_nan=False)
    """Local target: seconds the whole generation may take, checked after each token, then ``TimeoutError`` (a token
    being computed is not interrupted). With ``llm``: unused (set the wrapped model's own)."""
    max_retries: int = Field(0, ge=0, strict=True)
    """LangChain's standard parameter: local generation is never retried; with ``llm``: unused (set its own)."""
    api_key: Optional[SecretStr] = None
    """LangChain's standard parameter, unused: a local model needs no key; with ``llm``: not forwarded (set its own)."""
    streaming: bool = False
    """Stream by default in ``invoke``."""
    template: Optional[Literal["chat", "raw"]] = None
    """Prompt wrapping for the local target; default: "chat" when it has a chat template."""
    specpc: Any = None
    """A ``draft_rag.SpecPCConfig`` for SpecPC's other settings (window, kernel, layers, ``granularity``: whole
    sentences by default, ``"token"`` for the paper's token-level selection)."""
    speckv: Any = None
    """A ``draft_rag.SpecKVConfig`` for the KV methods' other settings."""
    target_kwargs: Optional[dict] = None
    """``draft_rag.load_model`` options for the target only (device_map, dtype, model_kwargs, ...)."""
    draft_kwargs: Optional[dict] = None
    """``draft_rag.load_model`` options for the draft only."""
    context_cache_mb: Annotated[float, Field(ge=0, allow_inf_nan=False)] = DEFAULT_CONTEXT_CACHE_MB
    """MiB of the draft's KV kept for contexts read before (follow-up questions reuse it); 0 turns it off."""

    model_config = CONFIG
    _engine: DraftEngine = PrivateAttr()
    _warned_window: bool = PrivateAttr(False)

    def _check_settings(self, base: type, kind: str, base_name: str) -> None:
        """Validate the settings, normalise ``stop`` and pick the shared engine; ``llm`` must be a ``base``."""
        if (self.target is None) == (self.llm is None):
            raise ValueError(f"give exactly one of target=... (or model=..., a local model) or llm=... (a {kind})")
        if self.llm is not None and not isinstance(self.llm, base):
            raise TypeError(f"llm must be a {base_name}, got {type(self.llm).__name__}")
        methods.get(self.method)
        if self.llm is not None:
            check_wrapped_method(self.method)
            if self.sparse_prefill:
                raise ValueError("sparse_prefill=True needs a local target (target=...); llm=... prefills itself")
        check_budget(self.budget, self.ratio)
        check_budget(self.pc_budget, self.pc_ratio, "pc_")
        self.stop = stop_list(self.stop) or None
        self._engine = shared_engine(
            self.target,
            self.draft,
            self.specpc,
            self.speckv,
            self.target_kwargs,
            self.draft_kwargs,
            context_cache_mb=self.context_cache_mb,
        )

    @property
    def engine(self) -> DraftEngine:
        """The shared ``DraftEngine`` behind this object (its models, settings and context cache)."""
        return self._engine

    @property
    def model_name(self) -> str:
        if self.llm is not None:
            inner = getattr(self.llm, "model_name", None) or getattr(self.llm, "model", None)
            return inner if isinstance(inner, str) and inner else type(self.llm).__name__
        return self._engine.target.name

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "draft": self._engine.draft.name,
            "method": self.method,
            "budget": self.budget,
            "ratio": self.ratio,
            "context_window": self.context_window,
            "pc_budget": self.pc_budget,
            "pc_ratio": self.pc_ratio,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": self.stop,
            "template": self.template,
            "lookahead_tokens": self.lookahead_tokens,
            "sparse_prefill": self.sparse_prefill,
            "specpc": dataclasses.asdict(self._engine.specpc),
            "speckv": dataclasses.asdict(self._engine.speckv),
            "target_kwargs": self.target_kwargs,
            "draft_kwargs": self.draft_kwargs,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        model_type = "chat" if isinstance(self, BaseChatModel) else "llm"
        params = LangSmithParams(
            ls_provider="draft_rag",
            ls_model_type=model_type,
            ls_model_name=kwargs.get("model") or self.model_name,
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
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
        opts = {k: kwargs.get(k, getattr(self, k, None)) for k in names}
        if "budget" in kwargs or "ratio" in kwargs:
            opts["budget"], opts["ratio"] = kwargs.get("budget"), kwargs.get("ratio")
        check_budget(opts["budget"], opts["ratio"])
        methods.get(opts["method"])
        if self.llm is not None:
            check_wrapped_method(opts["method"])
        opts["given"] = set(kwargs)
        opts["stop"] = stop_list(stop if stop is not None else self.stop)
        opts["extra"] = {k: v for k, v in kwargs.items() if k not in names and not k.startswith("ls_")}
        return opts

    def _wrapped_budget(self, opts: dict) -> tuple[dict, dict]:
        """SpecPC's budget in front of ``self.llm`` (``draft_rag.config.wrapped_budget``) and the stats' note on it.

        With no budget anywhere, ``"auto"`` or ``"adaptive"``, the prompt fits the wrapped model's input window:
        ``context_window`` if set, else the chat model's ``profile["max_input_tokens"]``, else ``ASSUMED_WINDOW``
        (logged once per instance).
        """
        window, source = model_window(self.llm, self.context_window)
        kwargs, note = wrapped_budget(opts["budget"], opts["ratio"], self._engine.specpc, window, source)
        if window is None and "context_window" in kwargs and not self._warned_window:
            self._warned_window = True
            warn_assumed(f"{type(self).__name__}(llm={type(self.llm).__name__})")
        return kwargs, note


def model_window(model: Any, context_window: int | None) -> tuple[int | None, str]:
    """A wrapped model's input window and where it was read: ``context_window`` (set on the adapter), else the chat
    model's ``profile["max_input_tokens"]``; None when neither says."""
    if context_window:
        return context_window, "context_window set here"
    profile = (getattr(model, "profile", None) or {}).get("max_input_tokens")
    return profile, "the chat model's profile['max_input_tokens']"


def warn_assumed(who: str) -> None:
    """Log that ``who`` assumed ``ASSUMED_WINDOW`` for a wrapped model whose window it does not know."""
    logger.warning(
        "%s: the wrapped model's context window is unknown, so prompts are fitted to ASSUMED_WINDOW=%d tokens; "
        "set context_window=... (its input window in tokens) or budget=... to choose",
        who,
        ASSUMED_WINDOW,
    )


def child_config(run_manager) -> dict | None:
    """A config that nests the wrapped model's run under this LLM run, with its handlers, tags and metadata."""
    if run_manager is None:
        return None
    cls = AsyncCallbackManager if isinstance(run_manager, AsyncCallbackManagerForLLMRun) else CallbackManager
    manager = cls(
        handlers=run_manager.inheritable_handlers,
        inheritable_handlers=run_manager.inheritable_handlers,
        parent_run_id=run_manager.run_id,
        tags=run_manager.inheritable_tags,
        inheritable_tags=run_manager.inheritable_tags,
        metadata=run_manager.inheritable_metadata,
        inheritable_metadata=run_manager.inheritable_metadata,
    )
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


async def astream_in_thread(make_iter: Callable[[], Iterator], run_manager) -> AsyncIterator:
    """``draft_rag.aio.iterate_in_thread``, reporting each chunk to the async ``run_manager`` (if any) as a token."""
    async for chunk in iterate_in_thread(make_iter):
        if run_manager:
            await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
        yield chunk


def emit(chunk, run_manager):
    """Report ``chunk`` to the sync ``run_manager`` (if any) as a new token; return it."""
    if run_manager:
        run_manager.on_llm_new_token(chunk.text, chunk=chunk)
    return chunk
