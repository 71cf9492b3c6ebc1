"""Shared by the LangChain adapters: their settings, argument checks, shared engines, thread-backed async iteration."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any, Literal, Optional, Union

from langchain_core.callbacks import AsyncCallbackManager, AsyncCallbackManagerForLLMRun, CallbackManager
from langchain_core.language_models import BaseChatModel, LangSmithParams
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, SecretStr

from draft_rag import DraftEngine
from draft_rag.adapters import (
    ASSUMED_WINDOW,
    HELP,
    GenerationOptions,
    check_settings,
    engine_of,
    hold_last,
    iterate_in_thread,
    options_of,
    setting,
    stop_list,
    with_deadline,
)

logger = logging.getLogger(__name__)
IDENTIFYING = ("method", "budget", "ratio", "context_window", "pc_budget", "pc_ratio", "max_tokens", "temperature",
               "top_p", "top_k", "seed", "stop", "template", "lookahead_tokens", "sparse_prefill", "target_kwargs",
               "draft_kwargs")  # fmt: skip
CALL_OPTIONS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "budget", "ratio", "method")  # decoding first


# Restated by each adapter class: LangChain's own base classes (extra="ignore") would otherwise win the merge.
CONFIG = ConfigDict(arbitrary_types_allowed=True, extra="forbid", use_attribute_docstrings=True)


class DraftSettings(BaseModel):
    """The settings and checks ``ChatDraftCompressed`` and ``DraftCompressedLLM`` share (help texts:
    ``draft_rag.adapters.HELP``). Put it first among the bases (its ``_identifying_params`` and ``_get_ls_params``
    override LangChain's), and restate ``model_config = CONFIG`` in the class.
    """

    target: Any = Field(None, validation_alias=AliasChoices("target", "model"), description=HELP["target"])
    llm: Any = Field(None, description=HELP["llm"])
    draft: Any = Field(None, description=HELP["draft"])
    method: str = Field(**setting("method"))
    budget: Optional[Union[Annotated[int, Field(ge=1, strict=True)], Literal["auto", "adaptive"]]] = Field(
        **setting("budget")
    )
    context_window: Optional[int] = Field(**setting("context_window"))
    ratio: Optional[float] = Field(**setting("ratio"))
    pc_budget: Optional[int] = Field(**setting("pc_budget"))
    pc_ratio: Optional[float] = Field(**setting("pc_ratio"))
    lookahead_tokens: Optional[int] = Field(**setting("lookahead_tokens"))
    sparse_prefill: Optional[bool] = Field(**setting("sparse_prefill"))
    max_tokens: int = Field(**setting("max_tokens"))
    temperature: float = Field(**setting("temperature"))
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
    template: Optional[Literal["chat", "raw"]] = Field(**setting("template"))
    specpc: Any = Field(**setting("specpc"))
    speckv: Any = Field(**setting("speckv"))
    target_kwargs: Optional[dict] = Field(**setting("target_kwargs"))
    draft_kwargs: Optional[dict] = Field(**setting("draft_kwargs"))
    context_cache_mb: float = Field(**setting("context_cache_mb"))
    chunk_cache_mb: float = Field(**setting("chunk_cache_mb"))

    model_config = CONFIG
    _engine: DraftEngine = PrivateAttr()
    _warned_window: bool = PrivateAttr(False)

    def _check_settings(self, base: type, kind: str, base_name: str) -> None:
        """Validate the settings, normalise ``stop`` and pick the shared engine; ``llm`` must be a ``base``."""
        if (self.target is None) == (self.llm is None):
            raise ValueError(f"give exactly one of target=... (or model=..., a local model) or llm=... (a {kind})")
        if self.llm is not None and not isinstance(self.llm, base):
            raise TypeError(f"llm must be a {base_name}, got {type(self.llm).__name__}")
        check_settings(self.method, self.llm is not None, self.sparse_prefill, self.budget, self.ratio)
        self.stop = stop_list(self.stop) or None
        options_of(self, max_new_tokens=self.max_tokens)  # checks the rest
        self._engine = engine_of(self, self.target, self.draft)

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
        params = {"model_name": self.model_name, "draft": self._engine.draft.name}
        params.update({name: getattr(self, name) for name in IDENTIFYING})
        return params | {k: dataclasses.asdict(getattr(self._engine, k)) for k in ("specpc", "speckv")}

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

    def _call(
        self, stop, kwargs: dict, run_manager, also_known: tuple[str, ...] = ()
    ) -> tuple[GenerationOptions, dict]:
        """This call's options (per-call ``CALL_OPTIONS`` over the settings, checked) and the keyword arguments for a
        wrapped model: the child run's config, ``stop``, other kwargs (``ls_*`` and ``also_known`` aside: a local
        target rejects them) and the decoding settings set explicitly (at construction or per call)."""
        unknown = [k for k in kwargs if k not in CALL_OPTIONS + also_known and not k.startswith("ls_")]
        if unknown and self.llm is None:
            raise TypeError(f"unexpected keyword arguments {unknown}; accepted per call: {CALL_OPTIONS}")
        changes = {k: kwargs[k] for k in CALL_OPTIONS if k in kwargs}
        if "budget" in kwargs or "ratio" in kwargs:
            changes.update(budget=kwargs.get("budget"), ratio=kwargs.get("ratio"))
        changes["max_new_tokens"] = changes.pop("max_tokens", self.max_tokens)
        changes["stop"] = stop_list(stop if stop is not None else self.stop)
        options = options_of(self, **changes)
        check_settings(options.method, self.llm is not None)
        wrapped = {"config": child_config(run_manager), "stop": list(options.stop) or None}
        wrapped.update({k: kwargs[k] for k in unknown})
        set_here = [k for k in CALL_OPTIONS[:5] if k in kwargs or k in self.model_fields_set]
        return options, wrapped | {k: kwargs.get(k, getattr(self, k)) for k in set_here}

    def _local(self, options: GenerationOptions, run_manager, chunk: Callable, last: Callable, **request) -> Iterator:
        """The local target's chunks: ``chunk(piece)`` as pieces are decoded, then ``last(piece, reply)``, which
        carries the stats (one piece is held back for it)."""
        reply = self._engine.stream(options=options, **request)
        for piece, is_last in hold_last(with_deadline(iter(reply), self.timeout)):
            yield emit(last(piece, reply) if is_last else chunk(piece), run_manager)


def front(owner: Any, model: Any, compress: Callable, options: Any, *args, **parts) -> tuple[Any, dict]:
    """``compress`` (``draft_rag.adapters.front_prompt`` or ``front_messages``) with ``options``' method and budget,
    in front of ``model``: the prompt fits its input window when no budget applies (``owner.context_window``, else
    the chat model's ``profile["max_input_tokens"]``, else ``ASSUMED_WINDOW``, logged once per ``owner``)."""
    window, source = owner.context_window, "context_window set here"
    if not window:
        window = (getattr(model, "profile", None) or {}).get("max_input_tokens")
        source = "the chat model's profile['max_input_tokens']"
    out, stats = compress(owner.engine, options.method, options.budget, options.ratio, window, source, *args, **parts)
    if window is None and "context_window" in stats and not owner._warned_window:
        owner._warned_window = True
        logger.warning(
            "%s (wrapping %s): the wrapped model's context window is unknown, so prompts are fitted to "
            "ASSUMED_WINDOW=%d tokens; set context_window=... (its input window in tokens) or budget=... to choose",
            type(owner).__name__, type(model).__name__, ASSUMED_WINDOW,
        )  # fmt: skip
    return out, stats


def child_config(run_manager) -> dict | None:
    """A config that nests the wrapped model's run under this LLM run, with its handlers, tags and metadata."""
    if run_manager is None:
        return None
    cls = AsyncCallbackManager if isinstance(run_manager, AsyncCallbackManagerForLLMRun) else CallbackManager
    inherited = {k: getattr(run_manager, f"inheritable_{k}") for k in ("handlers", "tags", "metadata")}
    manager = cls(
        **inherited, **{f"inheritable_{k}": v for k, v in inherited.items()}, parent_run_id=run_manager.run_id
    )
    return {"callbacks": manager}


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
