"""Validated configurations for SpecPC and SpecKV, with the paper's defaults."""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

from .units import DEFAULT_GAP, DEFAULT_GRANULARITY, check_granularity

POOLS = ("max", "avg", "none")
REDUCTIONS = ("max", "mean")
DEFAULT_BUDGET = 1024  # tokens (SpecPC) or KV entries per layer and KV head (SpecKV) when no budget is given
DEFAULT_PC_BUDGET = 2048  # SpecPC's prompt budget inside speckv-pc when neither pc_budget nor pc_ratio is given
AUTO_MARGIN = 0.97  # budget="auto" aims at 97% of the room: kept pieces may re-tokenise a little longer
DEFAULT_COVERAGE = 0.9  # budget="adaptive": the share of the context's pooled draft attention kept (see README)
AUTO_PAY_RATIO = 0.5  # budget="auto" compressing a prompt that fits: the share kept when SpecPCConfig sets no budget
# (of the ratios and coverages run on RULER at 1k, the best mean: docs/RESULTS.md, "The adaptive budget")
DEFAULT_MIN_TOKENS = 2048  # budget="auto" before a remote model: shorter contexts that fit its window stay whole
ASSUMED_WINDOW = 32768  # tokens assumed for a wrapped model whose window is unknown, when no budget is given
ASSUMED_NOTE = "ASSUMED_WINDOW: the wrapped model's window is unknown; set context_window=... or budget=..."


def check_int(name: str, value, minimum: int = 0, allow_none: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an int >= ``minimum`` (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_fraction(name: str, value, allow_none: bool = True) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a number in (0, 1] (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class Budget:
    """A budget parsed once: ``tokens``, a ``ratio`` of the prompt, ``auto`` (fit a window), ``adaptive`` (as
    many tokens as the draft's attention needs), or unset.

    ``Budget.parse(budget, ratio)`` takes a call's two arguments (``budget`` an int, ``"auto"`` or ``"adaptive"``)
    and names them in its errors as the caller did (``prefix="pc_"`` for ``pc_budget`` / ``pc_ratio``).
    """

    tokens: int | None = None
    ratio: float | None = None
    auto: bool = False
    adaptive: bool = False

    @classmethod
    def parse(cls, budget=None, ratio=None, prefix: str = "", allow_auto: bool = True) -> Budget:
        named = allow_auto and budget in ("auto", "adaptive")
        if budget is not None and ratio is not None:
            what = f"(tokens or {budget!r})" if named else "(tokens)"
            raise ValueError(f"give either {prefix}budget {what} or {prefix}ratio (a fraction), not both")
        if named:
            return cls(auto=budget == "auto", adaptive=budget == "adaptive")
        check_int(prefix + "budget", budget, 1, allow_none=True)
        check_fraction(prefix + "ratio", ratio)
        return cls(tokens=budget, ratio=ratio)

    @property
    def is_unset(self) -> bool:
        return self.tokens is None and self.ratio is None and not self.auto and not self.adaptive

    def resolve(self, n_tokens: int, default: int = DEFAULT_BUDGET) -> int:
        """The budget for ``n_tokens`` tokens (``default`` when unset; ``auto`` is fitted by the pipeline)."""
        if self.ratio is not None:
            return max(1, round(self.ratio * n_tokens))
        return default if self.tokens is None else self.tokens


def wrapped_budget(budget, ratio, specpc: SpecPCConfig, window: int | None, source: str) -> tuple[dict, dict]:
    """SpecPC's budget in front of a wrapped model: the ``compress`` / ``compress_messages`` keyword arguments, and
    the note each response's stats carry (``budget``, ``ratio``, ``context_window``, ``budget_reason``).

    A ``budget``/``ratio`` given (or set in ``specpc``) applies as it is. Otherwise (no budget, ``"auto"``,
    ``"adaptive"``) the prompt must fit ``window`` tokens, the model's input window (``source`` says where it was
    read); when that is unknown (None) ``ASSUMED_WINDOW`` is assumed and the note says so.
    """
    if budget not in ("auto", "adaptive") and (budget is not None or ratio is not None):
        given = f"budget={budget} draft tokens" if budget is not None else f"ratio={ratio} of the context kept"
        return {"budget": budget, "ratio": ratio}, {"budget": budget, "ratio": ratio, "budget_reason": given + " (set)"}
    if budget is None and (specpc.budget is not None or specpc.ratio is not None):
        own = f"budget={specpc.budget}" if specpc.budget is not None else f"ratio={specpc.ratio}"
        note = {"budget": specpc.budget, "ratio": specpc.ratio, "budget_reason": f"SpecPCConfig({own})"}
        return {"budget": None, "ratio": None}, note
    if window is None:
        window, source = ASSUMED_WINDOW, ASSUMED_NOTE
    kind = budget or "auto"
    why = "as many tokens as the draft's attention needs, within" if kind == "adaptive" else "fit"
    asked = f"budget={kind!r}" if budget else "no budget given"
    reason = f"{asked}: {why} a {window}-token window ({source})"
    note = {"budget": kind, "context_window": window, "budget_reason": reason}
    return {"budget": kind, "context_window": window}, note


def chunk_budget(budget, ratio, context_window: int | None) -> tuple[int | None, str]:
    """A chunk pruner's draft-token budget (the node postprocessor, the document compressor) and why, in words.

    ``budget="auto"`` keeps the chunks that fit ``context_window`` tokens (the room the LLM's prompt leaves them),
    with ``AUTO_MARGIN``'s slack for re-tokenisation; ``context_window`` is required with it and refused without it.
    """
    if budget == "auto":
        if context_window is None:
            raise ValueError(
                "budget='auto' needs context_window=... (the tokens of the LLM's prompt the kept chunks may fill)"
            )
        check_int("context_window", context_window, 1)
        n = max(1, int(context_window * AUTO_MARGIN))
        return n, f"budget='auto': {n} draft tokens, {AUTO_MARGIN:.0%} of context_window={context_window}"
    if context_window is not None:
        raise ValueError(f"context_window={context_window} is for budget='auto'; give that too, or drop it")
    Budget.parse(budget, ratio, allow_auto=False)
    if budget is not None:
        return budget, f"budget={budget} draft tokens (set)"
    if ratio is not None:
        return None, f"ratio={ratio} of the chunks' draft tokens (set)"
    return None, "no budget: chunks are kept by top_n / threshold"


def check_budget(budget, ratio, prefix: str = "") -> None:
    """Check a call's ``budget`` (tokens, >= 1) / ``ratio`` (in (0, 1]) pair, naming them as the caller did."""
    Budget.parse(budget, ratio, prefix, allow_auto=False)


class _Budgeted:
    """Shared by both configs: ``budget`` tokens or a ``ratio`` (``max_capacity_prompt``: the paper's name)."""

    def budget_for(self, n_tokens: int) -> int:
        """The budget for a prompt of ``n_tokens`` tokens."""
        return Budget(self.budget, self.ratio).resolve(n_tokens)

    def replace(self, **changes):
        """A copy with ``changes``; setting one kind of budget clears the other."""
        changes = _alias(changes)
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if changes.get("budget") is not None:
            values["ratio"] = None
        if changes.get("ratio") is not None:
            values["budget"] = None
        if "coverage" in values and (changes.get("budget") is not None or changes.get("ratio") is not None):
            values["coverage"] = None  # a fixed budget replaces an adaptive one
        if changes.get("coverage") is not None:
            values["budget"] = values["ratio"] = None
        values.update(changes)
        return type(self)(**values)

    def _check_common(self) -> None:
        if self.budget is not None and self.ratio is not None:
            raise ValueError("give either budget (max_capacity_prompt, tokens) or ratio, not both")
        check_int("budget (max_capacity_prompt)", self.budget, 1, allow_none=True)
        check_fraction("ratio", self.ratio)
        check_int("window_size", self.window_size, 1)
        check_choice("pool_type", self.pool_type, POOLS)
        check_int("kernel_size", self.kernel_size, 1, allow_none=isinstance(self, SpecPCConfig))
        check_choice("reduction_type", self.reduction_type, REDUCTIONS)


def _alias(kwargs: dict) -> dict:
    """``max_capacity_prompt=`` (the paper's name) as ``budget=``."""
    if "max_capacity_prompt" not in kwargs:
        return kwargs
    kwargs = dict(kwargs)
    alias = kwargs.pop("max_capacity_prompt")
    if alias is not None and kwargs.get("budget") is not None:
        raise ValueError("give budget or its alias max_capacity_prompt, not both")
    if alias is not None or "budget" not in kwargs:
        kwargs["budget"] = alias
    return kwargs


def _paper_alias(cls):
    """Accept and expose ``max_capacity_prompt`` as an alias of the ``budget`` field."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **_alias(kwargs))

    cls.__init__ = __init__
    cls.max_capacity_prompt = property(lambda self: self.budget, doc="Alias of ``budget`` (the paper's name).")
    return cls


@_paper_alias
@dataclass(frozen=True)
class SpecPCConfig(_Budgeted):
    """Prompt compression from the draft's attention (paper defaults).

    The budget is either ``budget`` tokens (of the draft's tokenizer, counted over the
    compressible text plus protected segments) or the protected segments plus ``ratio`` of the compressible
    text; with neither, 1024 tokens.

    ``kernel_size=None`` takes the paper's value for the draft's family (``family_kernel_size``: 64 for
    Qwen-family drafts, 32 for Llama-family and every other architecture); ``neighbor_tokens=None``
    follows ``kernel_size``. ``lookahead_tokens`` counts draft tokens generated, as in the official
    SpecPC: the prefill window's rows are always scored and the first ``lookahead_tokens - 1`` generated
    tokens are fed back and scored too; the last one is only returned (SpecKV-PC's lookahead). So ``1``
    (the default) scores the prefill window alone and ``0`` generates nothing.

    ``coverage`` makes the budget adaptive instead (``budget="adaptive"``): after the draft pass, keep the fewest
    context tokens whose pooled draft attention adds up to this share of the whole context's, then at least
    ``floor`` and at most ``ceiling`` tokens (protected text included, as ``budget`` counts).

    ``min_tokens``: ``budget="auto"`` in front of a remote model leaves whole a prompt that fits its window when
    the prompt's context has at most this many tokens (a local target is timed instead: ``draft_rag.payoff``).

    ``granularity``: what is kept or dropped whole, ``"sentence"`` (the default), ``"word"``, ``"line"``, or
    ``"token"`` (the paper's SpecPC: tokens and their neighbours, joined end to end). In the unit modes a unit
    scores its best pooled token, units are kept best first while they fit the budget (a unit that does not
    fit is skipped, so a budget may be a few tokens under-spent), structured lines (table rows, list items,
    headings, code lines) are single units, and ``gap`` marks each place where text was dropped between two
    kept units (its tokens count in the budget; ``gap=""`` joins them end to end). See ``draft_rag.units``.
    """

    budget: int | None = None
    ratio: float | None = None
    window_size: int = 64
    pool_type: str = "max"
    kernel_size: int | None = None
    reduction_type: str = "max"
    neighbor_tokens: int | None = None
    starting_layer_index: int = 8
    weighted_query: bool = True
    lookahead_tokens: int = 1
    coverage: float | None = None
    floor: int | None = None
    ceiling: int | None = None
    min_tokens: int = DEFAULT_MIN_TOKENS
    granularity: str = DEFAULT_GRANULARITY
    gap: str = DEFAULT_GAP

    def __post_init__(self):
        self._check_common()
        check_int("min_tokens", self.min_tokens, 0)
        check_granularity(self.granularity)
        if not isinstance(self.gap, str):
            raise ValueError(f"gap must be a string (the mark between kept units; '' for none), got {self.gap!r}")
        if self.coverage is not None and (self.budget is not None or self.ratio is not None):
            raise ValueError("give either coverage (an adaptive budget) or budget/ratio, not both")
        check_fraction("coverage", self.coverage)
        check_int("floor", self.floor, 1, allow_none=True)
        check_int("ceiling", self.ceiling, 1, allow_none=True)
        if self.floor is not None and self.ceiling is not None and self.floor > self.ceiling:
            raise ValueError(f"floor ({self.floor}) must not exceed ceiling ({self.ceiling})")
        check_int("neighbor_tokens", self.neighbor_tokens, 0, allow_none=True)
        check_int("starting_layer_index", self.starting_layer_index, 0)
        check_int("lookahead_tokens", self.lookahead_tokens, 0)
        if not isinstance(self.weighted_query, bool):
            raise ValueError(f"weighted_query must be True or False, got {self.weighted_query!r}")

    def for_draft(self, model) -> SpecPCConfig:
        """A copy with ``kernel_size`` / ``neighbor_tokens`` resolved for ``model`` (the draft)."""
        kernel = self.kernel_size if self.kernel_size is not None else family_kernel_size(model)
        neighbors = self.neighbor_tokens if self.neighbor_tokens is not None else kernel
        return self.replace(kernel_size=kernel, neighbor_tokens=neighbors)


# The paper's SpecPC kernel (= neighbours) per draft family: 64 for Qwen2.5 0.5B->14B, 32 for Llama 3.2 1B->8B.
QWEN_FAMILY = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe")
QWEN_KERNEL, OTHER_KERNEL = 64, 32
# SpecPC inside SpecKV-PC (official speckvpc configs, every family): kernel = neighbours = 32, and the draft
# generates 20 tokens (transformers' default when no max_new_tokens is given), reused as SpecKV's lookahead.
SPECKV_PC_KERNEL = 32
SPECKV_PC_LOOKAHEAD = 20


def family_kernel_size(model) -> int:
    """SpecPC's default kernel for a draft: 64 for the Qwen family, 32 for Llama and all others."""
    config = getattr(model, "config", model)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return QWEN_KERNEL if getattr(config, "model_type", "") in QWEN_FAMILY else OTHER_KERNEL


@_paper_alias
@dataclass(frozen=True)
class SpecKVConfig(_Budgeted):
    """KV-cache eviction guided by a draft lookahead (paper defaults; see the README's SpecKV section).

    The KV budget is ``budget`` entries per layer and KV head, or ``ratio`` of the prompt's
    tokens; with neither, ``DEFAULT_BUDGET`` (1024); ``max_capacity_prompt`` (the paper's name) is an alias of
    ``budget``. ``lookahead_tokens=None`` drafts as many tokens as will be generated.
    ``sink_tokens`` is StreamingLLM's sink and ``seed`` seeds the random baseline.
    """

    budget: int | None = None
    ratio: float | None = None
    window_size: int = 32
    pool_type: str = "max"
    kernel_size: int = 7
    reduction_type: str = "max"
    lookahead_tokens: int | None = None
    sink_tokens: int = 4
    seed: int = 0

    def __post_init__(self):
        self._check_common()
        check_int("lookahead_tokens", self.lookahead_tokens, 0, allow_none=True)
        check_int("sink_tokens", self.sink_tokens, 0)
        check_int("seed", self.seed, 0)


@dataclass(frozen=True)
class SparsePrefillConfig:
    """Vertical-slash sparse prefill for a local target (the paper's settings and defaults).

    Every query attends to the ``prefill_vertical_size`` key columns that the last queries (SpecKV's window and
    lookahead; for the other methods the last ``estimate_queries`` prompt tokens) attend to most, plus the local
    band: the ``prefill_window_size`` keys before its block of ``query_block`` queries and the block itself.
    Only prefills longer than ``min_tokens`` are sparse (default ``prefill_vertical_size + prefill_window_size``,
    the paper's rule); sliding-window layers keep their own kernel.
    """

    prefill_vertical_size: int = 2048
    prefill_window_size: int = 2048
    estimate_queries: int = 64
    query_block: int = 1024
    min_tokens: int | None = None

    def __post_init__(self):
        for f in fields(self):
            if f.name != "min_tokens":
                check_int(f.name, getattr(self, f.name), 1)
        check_int("min_tokens", self.min_tokens, 0, allow_none=True)
        if self.min_tokens is None:
            object.__setattr__(self, "min_tokens", self.prefill_vertical_size + self.prefill_window_size)

    @classmethod
    def parse(cls, value) -> SparsePrefillConfig | None:
        """``sparse_prefill=`` as callers give it: True (the defaults), False/None (dense), or a config."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        raise ValueError(f"sparse_prefill must be True, False, None or a SparsePrefillConfig, got {value!r}")
