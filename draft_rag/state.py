"""What the request path reads of an engine: its models, windows, settings, caches and measured costs.

``pipeline`` and ``payoff`` take an ``EngineState`` (a ``DraftEngine`` is one) instead of importing the engine,
so the module graph has no circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .chunk_cache import ChunkCache
from .config import SpecKVConfig, SpecPCConfig
from .context_cache import ContextCache
from .models import LoadedModel


@dataclass(frozen=True)
class Costs:
    """Seconds as ``fixed + per_token * n``: ``draft`` for SpecPC's scoring pass over ``n`` tokens, ``target``
    for the target's prefill of ``n`` tokens."""

    draft: tuple[float, float]
    target: tuple[float, float]

    def draft_seconds(self, n: float) -> float:
        return self.draft[0] + self.draft[1] * n

    def target_seconds(self, n: float) -> float:
        return self.target[0] + self.target[1] * n


class EngineState(Protocol):
    """The parts of a ``DraftEngine`` that preparing a request uses."""

    draft: LoadedModel
    target: LoadedModel | None
    specpc: SpecPCConfig
    speckv: SpecKVConfig
    draft_window: int | None
    target_window: int | None
    block_size: int
    context_cache: ContextCache
    chunk_cache: ChunkCache
    costs: Costs | None  # measured at first need (``payoff.measure_costs``)

    @property
    def count_tokenizer(self): ...
