"""Validated configurations for SpecPC and SpecKV, with the paper's defaults."""

from __future__ import annotations

from dataclasses import dataclass, fields

_POOLS = ("max", "avg", "none")
_REDUCTIONS = ("max", "mean")


def _check_int(name: str, value, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_budget(max_capacity_prompt, ratio, minimum: int) -> None:
    if max_capacity_prompt is not None and ratio is not None:
        raise ValueError("give either max_capacity_prompt (tokens) or ratio, not both")
    _check_int("max_capacity_prompt", max_capacity_prompt, minimum, allow_none=True)
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1):
        raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}")


def check_budget(budget, ratio, prefix: str = "") -> None:
    """Check a call's ``budget`` (tokens, >= 1) / ``ratio`` (in (0, 1]) pair, naming them as the caller did."""
    if budget is not None and ratio is not None:
        raise ValueError(f"give either {prefix}budget (tokens) or {prefix}ratio (a fraction), not both")
    _check_int(prefix + "budget", budget, 1, allow_none=True)
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1):
        raise ValueError(f"{prefix}ratio must be a number in (0, 1], got {ratio!r}")


class _Budgeted:
    """Budget helpers shared by both configs: ``max_capacity_prompt`` tokens or a ``ratio``; default 1024."""

    def budget_for(self, n_tokens: int) -> int:
        """The budget for a prompt of ``n_tokens`` tokens."""
        if self.ratio is not None:
            return max(1, round(self.ratio * n_tokens))
        return 1024 if self.max_capacity_prompt is None else self.max_capacity_prompt

    def replace(self, **changes):
        """A copy with ``changes``; setting one kind of budget clears the other."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if changes.get("max_capacity_prompt") is not None:
            values["ratio"] = None
        if changes.get("ratio") is not None:
            values["max_capacity_prompt"] = None
        values.update(changes)
        return type(self)(**values)

    def _check_common(self) -> None:
        _check_budget(self.max_capacity_prompt, self.ratio, 1)
        _check_int("window_size", self.window_size, 1)
        _check_choice("pool_type", self.pool_type, _POOLS)
        _check_int("kernel_size", self.kernel_size, 1, allow_none=isinstance(self, SpecPCConfig))
        _check_choice("reduction_type", self.reduction_type, _REDUCTIONS)


@dataclass(frozen=True)
class SpecPCConfig(_Budgeted):
    """Prompt compression from the draft's attention (paper defaults).

    The budget is either ``max_capacity_prompt`` tokens (of the draft's tokenizer, counted over the
    compressible text plus protected segments) or the protected segments plus ``ratio`` of the compressible
    text; with neither, 1024 tokens.

    ``kernel_size=None`` takes the paper's value for the draft's family (``family_kernel_size``: 64 for
    Qwen-family drafts, 32 for Llama-family and every other architecture); ``neighbor_tokens=None``
    follows ``kernel_size``. ``lookahead_tokens`` counts draft tokens generated, as in the official
    SpecPC: the prefill window's rows are always scored and the first ``lookahead_tokens - 1`` generated
    tokens are fed back and scored too; the last one is only returned (SpecKV-PC's lookahead). So ``1``
    (the default) scores the prefill window alone and ``0`` generates nothing.
    """

    max_capacity_prompt: int | None = None
    ratio: float | None = None
    window_size: int = 64
    pool_type: str = "max"
    kernel_size: int | None = None
    reduction_type: str = "max"
    neighbor_tokens: int | None = None
    starting_layer_index: int = 8
    weighted_query: bool = True
    lookahead_tokens: int = 1

    def __post_init__(self):
        self._check_common()
        _check_int("neighbor_tokens", self.neighbor_tokens, 0, allow_none=True)
        _check_int("starting_layer_index", self.starting_layer_index, 0)
        _check_int("lookahead_tokens", self.lookahead_tokens, 0)
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


@dataclass(frozen=True)
class SpecKVConfig(_Budgeted):
    """KV-cache eviction guided by a draft lookahead (paper defaults; see the README's SpecKV section).

    The KV budget is ``max_capacity_prompt`` entries per layer and KV head, or ``ratio`` of the prompt's
    tokens; with neither, 1024. ``lookahead_tokens=None`` drafts as many tokens as will be generated.
    ``sink_tokens`` is StreamingLLM's sink and ``seed`` seeds the random baseline.
    """

    max_capacity_prompt: int | None = None
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
        _check_int("lookahead_tokens", self.lookahead_tokens, 0, allow_none=True)
        _check_int("sink_tokens", self.sink_tokens, 0)
        _check_int("seed", self.seed, 0)
