"""The generation methods as data: one frozen ``Method`` per name in ``REGISTRY``.

Code asks a method what it does (``method.evicts_kv``) instead of testing its name. Adding a method is one
entry here plus, for a KV method, its scorer (a function of the ``SpecKVConfig`` that returns a fresh
``speckv.Scorer`` for one prefill).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from .baselines import RandomScores, streaming_scores
from .config import SpecKVConfig
from .speckv import Scorer, attention_scores


@dataclass(frozen=True)
class Method:
    """What one method does to a request.

    Attributes:
        name: the name users pass (``method="speckv"``).
        shortens_prompt: SpecPC shortens the prompt text with the draft before the target reads it.
        evicts_kv: the target's prefill keeps a KV budget (entries per layer and KV head).
        drafts_lookahead: the draft writes a lookahead that joins the eviction's scoring window (SpecKV).
        make_scorer: for KV methods, ``make_scorer(SpecKVConfig)`` -> a fresh scorer for one prefill.
        summary: one line for help texts.
        reference: the uncompressed method every other is compared with (full context).
        external: run by the bench itself, not by ``DraftEngine`` (``BENCH_METHODS``: LongLLMLingua-2).
    """

    name: str
    shortens_prompt: bool = False
    evicts_kv: bool = False
    drafts_lookahead: bool = False
    make_scorer: Callable[[SpecKVConfig], Scorer] | None = None
    summary: str = ""
    reference: bool = False
    external: bool = False

    @property
    def prompt_only(self) -> bool:
        """Shortens the prompt and leaves the target's KV cache whole (SpecPC, LongLLMLingua-2)."""
        return self.shortens_prompt and not self.evicts_kv

    @property
    def kv_only(self) -> bool:
        """Evicts KV entries of the whole prompt, which it leaves as it is (SpecKV, SnapKV, ...)."""
        return self.evicts_kv and not self.shortens_prompt

    @property
    def adaptive(self) -> bool:
        """Takes ``budget="adaptive"``: the draft's attention sizes the prompt it keeps (SpecPC alone)."""
        return self.prompt_only and not self.external

    @property
    def works_remote(self) -> bool:
        """Usable in front of a target that only reads text (a remote API): no KV cache to evict."""
        return not self.evicts_kv

    def __str__(self) -> str:
        return self.name


def _attention(cfg: SpecKVConfig) -> Scorer:
    return functools.partial(attention_scores, cfg=cfg)


def _streaming(cfg: SpecKVConfig) -> Scorer:
    return functools.partial(streaming_scores, sink_tokens=cfg.sink_tokens)


def _random(cfg: SpecKVConfig) -> Scorer:
    return RandomScores(cfg.seed)


REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method("full", reference=True, summary="the whole prompt, dense KV cache"),
        Method("specpc", shortens_prompt=True, summary="prompt compression from the draft's attention"),
        Method("speckv", evicts_kv=True, drafts_lookahead=True, make_scorer=_attention,
               summary="KV eviction scored with the draft's lookahead"),
        Method("speckv-pc", shortens_prompt=True, evicts_kv=True, drafts_lookahead=True, make_scorer=_attention,
               summary="SpecPC, then SpecKV on the shortened prompt"),
        Method("snapkv", evicts_kv=True, make_scorer=_attention, summary="KV eviction scored by the last prompt rows"),
        Method("streamingllm", evicts_kv=True, make_scorer=_streaming, summary="attention sinks + recent tokens"),
        Method("random", evicts_kv=True, make_scorer=_random, summary="a seeded random KV choice (baseline)"),
    )
}  # fmt: skip
NAMES = tuple(REGISTRY)
REMOTE_NAMES = tuple(name for name, m in REGISTRY.items() if m.works_remote)


# Methods the bench runs beside the engine's (``draft_rag.bench``): named here so the bench asks what they do.
BENCH_METHODS: dict[str, Method] = {
    "llmlingua": Method("llmlingua", shortens_prompt=True, external=True,
                        summary="LongLLMLingua-2's prompt compression, in its own environment (bench only)"),
}  # fmt: skip


def get(method: str | Method, what: str = "method") -> Method:
    """The ``Method`` for a name (or the method itself); ``ValueError`` naming ``what`` for an unknown one."""
    if isinstance(method, Method):
        return method
    if method not in REGISTRY:
        raise ValueError(f"{what} must be one of {NAMES}, got {method!r}")
    return REGISTRY[method]


def bench_get(method: str | Method) -> Method:
    """``get``, also knowing the bench's own methods (``BENCH_METHODS``)."""
    if isinstance(method, str) and method in BENCH_METHODS:
        return BENCH_METHODS[method]
    return get(method)
