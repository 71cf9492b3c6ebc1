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
        _check_int("kernel_size", self.kernel_size, 1)
        _check_choice("reduction_type", self.reduction_type, _REDUCTIONS)


@dataclass(frozen=True)
class SpecPCConfig(_Budgeted):
    """Prompt compression from the draft's attention (paper defaults).

    The budget is either ``max_capacity_prompt`` tokens (of the draft's tokenizer, counted over the
    compressible text plus protected segments) or the protected segments plus ``ratio`` of the compressible
    text; with neither, 1024 tokens.
    """

    max_capacity_prompt: int | None = None
    ratio: float | None = None
    window_size: int = 64
    pool_type: str = "max"
    kernel_size: int = 64
    reduction_type: str = "max"
    neighbor_tokens: int = 64
    starting_layer_index: int = 8
    weighted_query: bool = True
    lookahead_tokens: int = 1

    def __post_init__(self):
        self._check_common()
        _check_int("neighbor_tokens", self.neighbor_tokens, 0)
        _check_int("starting_layer_index", self.starting_layer_index, 0)
        _check_int("lookahead_tokens", self.lookahead_tokens, 0)
        if not isinstance(self.weighted_query, bool):
            raise ValueError(f"weighted_query must be True or False, got {self.weighted_query!r}")


@dataclass(frozen=True)
class SpecKVConfig(_Budgeted):
    """KV-cache eviction guided by a draft lookahead (paper defaults; see ALGORITHMS.md, SpecKV).

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
