"""SpecKV: draft-guided KV-cache eviction during the target's prefill (Galim et al., arXiv 2506.08373).

The target prefills prompt + draft lookahead in one pass. Right after each layer's attention ran, an
observer (``attention.observe``) scores the prompt keys with the window queries (last ``window`` prompt
tokens + the lookahead), keeps per KV head the top ``budget - window`` keys plus the window, and replaces
that layer's cache with them: only one layer's full KV exists at a time. As in the official SpecKV, the
last prompt token counts as a window query rather than a kept key: the cache is compressed over the tokens
before it, and the last prompt token is fed again over the compressed cache, so the first answer token and
that token's KV come from the compressed context. The lookahead's KV is dropped and decoding continues at
the original positions ``N, N+1, ...`` (keys are stored already rotated).

Sliding-window layers (Gemma3, Mistral): when the window covers the prompt and every position that will be
decoded, the layer attends like a full layer and is compressed like one. Otherwise it keeps what a plain
prefill keeps, the last ``sliding_window - 1`` prompt tokens (already bounded), because transformers builds
its mask from contiguous positions; only the lookahead's entries are removed there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .attention import observe, window_probs
from .config import SparsePrefillConfig, SpecKVConfig, check_int
from .generation import Prefilled, plain_prefill
from .models import input_device
from .prompt import Segment, tokenize
from .scoring import cache_kwarg, num_layers, pool
from .sparse_prefill import sparse_prefill

log = logging.getLogger(__name__)

# (query, key, attention_mask, kwargs, n_prompt, window) -> [B, Hkv, n_prompt - window] scores of the
# prompt keys before the window (higher = keep).
Scorer = Callable[..., torch.Tensor]


def attention_scores(
    query, key, attention_mask, kwargs, n_prompt: int, window: int, cfg: SpecKVConfig = SpecKVConfig()
) -> torch.Tensor:
    """Window-query attention to each prompt key, reduced over the GQA group and queries, pooled along keys."""
    n_queries = query.shape[2] - n_prompt + window  # last `window` prompt queries + all lookahead queries
    probs = window_probs(query, key, attention_mask, kwargs, n_queries)[..., : n_prompt - window]
    scores = probs.amax(dim=(2, 3)) if cfg.reduction_type == "max" else probs.mean(dim=(2, 3))
    return pool(scores, cfg.pool_type, cfg.kernel_size)


def keep_indices(scores: torch.Tensor, n_prompt: int, budget: int, window: int) -> torch.Tensor:
    """Prompt positions to keep per KV head, ascending: the top ``budget - window`` scored + the window.

    ``scores`` is ``[B, H, n_prompt - window]``; returns ``[B, H, budget]`` (all positions if the budget
    covers the prompt).
    """
    b, h, n_cand = scores.shape
    if n_cand != n_prompt - window:
        raise ValueError(f"scores cover {n_cand} keys, expected n_prompt - window = {n_prompt - window}")
    if budget >= n_prompt:
        return torch.arange(n_prompt, device=scores.device).expand(b, h, n_prompt)
    top = scores.topk(budget - window, dim=-1).indices.sort(dim=-1).values
    win = torch.arange(n_prompt - window, n_prompt, device=scores.device).expand(b, h, window)
    return torch.cat([top, win], dim=-1)


@dataclass
class KVStats:
    """What the compressed prefill kept. ``kept[i]`` is ``[B, Hkv, k]`` prompt positions, or ``None`` where
    layer ``i`` kept a contiguous tail (an unconverted sliding-window layer)."""

    entries: list[int] = field(default_factory=list)  # cache entries per KV head, per layer
    kept: list[torch.Tensor | None] = field(default_factory=list)
    kv_bytes: int = 0
    kv_bytes_full: int = 0  # what a plain prefill of the prompt would hold
    seconds: dict = field(default_factory=dict)  # prefill (incl. select), select
    sparse_layers: int = 0  # layer calls of the prefill that ran vertical-slash sparse


class _Evictor:
    """Observer that compresses each layer's cache as soon as its attention has run."""

    def __init__(self, cache, n_prompt: int, budget: int, window: int, scorer: Scorer, horizon: int, n_layers: int):
        self.cache, self.n, self.budget, self.scorer, self.horizon = cache, n_prompt, budget, scorer, horizon
        self.window = min(window, budget, n_prompt)
        self.kept: list = [None] * n_layers
        self.done = [False] * n_layers
        self.seconds = 0.0

    def __call__(self, module, query, key, attention_mask, kwargs):
        t0 = time.perf_counter()
        i, n = module.layer_idx, self.n
        layer = self.cache.layers[i]
        if layer.is_sliding and layer.sliding_window < n + self.horizon:
            tail = slice(max(0, n - layer.sliding_window + 1), n)
            layer.keys, layer.values = layer.keys[:, :, tail].clone(), layer.values[:, :, tail].clone()
            layer.cumulative_length, layer.record_past = n, False
        else:
            if self.budget >= n:
                keys, values = layer.keys[:, :, :n].clone(), layer.values[:, :, :n].clone()
            else:
                scores = self.scorer(query, key, attention_mask, kwargs, n, self.window)
                idx = keep_indices(scores, n, self.budget, self.window)
                self.kept[i] = idx
                gather = idx[..., None].expand(*idx.shape, layer.keys.shape[-1])
                keys = torch.gather(layer.keys[:, :, :n], 2, gather)
                values = torch.gather(
                    layer.values[:, :, :n], 2, idx[..., None].expand(*idx.shape, layer.values.shape[-1])
                )
            if layer.is_sliding:  # the window covers everything: a plain layer with scattered positions
                layer = self.cache.layers[i] = DynamicLayer()
                layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
        self.done[i] = True
        self.seconds += time.perf_counter() - t0


def kv_bytes(cache) -> int:
    """Bytes held by a cache's key and value tensors."""
    return sum(
        t.numel() * t.element_size()
        for layer in cache.layers
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
        if t is not None
    )


def _entries(cache) -> list[int]:
    return [layer.keys.shape[-2] if getattr(layer, "keys", None) is not None else 0 for layer in cache.layers]


@torch.no_grad()
def compressed_prefill(
    model,
    prompt_ids: list[int],
    lookahead_ids: list[int],
    budget: int,
    scorer: Scorer,
    *,
    window: int = 32,
    horizon: int = 1,
    sparse: SparsePrefillConfig | None = None,
) -> tuple[Prefilled, KVStats]:
    """Prefill ``prompt_ids + lookahead_ids``, keeping ``budget`` entries of the prompt before its last token
    per layer and KV head, then feed that last token again over the compressed cache.

    As in the official SpecKV, the window queries are the last ``window`` tokens before the last prompt token,
    the last prompt token and the lookahead; the first answer token's logits and the last prompt token's KV
    come from the compressed context (``budget + 1`` entries). ``horizon`` is how many tokens will be decoded
    (it decides whether sliding-window layers can be compressed). The returned state continues at position
    ``len(prompt_ids)``; the lookahead's KV is not in the cache. ``sparse``: the prefill is vertical-slash
    sparse, its columns chosen by the same window queries (``sparse_prefill``).
    """
    if not prompt_ids:
        raise ValueError("prompt_ids must not be empty")
    check_int("budget", budget, 1)
    if len(prompt_ids) == 1:
        return plain_prefill_stats(model, prompt_ids, sparse)
    t0 = time.perf_counter()
    n, last = len(prompt_ids) - 1, prompt_ids[-1]  # n: the compressed prefix
    cache = DynamicCache(config=model.config)
    for layer in cache.layers:
        if layer.is_sliding:
            layer.activate_past_recording()  # keep every entry until the observer has chosen
    full_entries = [min(n + 1, layer.sliding_window - 1) if layer.is_sliding else n + 1 for layer in cache.layers]
    evictor = _Evictor(cache, n, budget, window, scorer, horizon + 1, num_layers(model))
    ids = torch.tensor([list(prompt_ids) + list(lookahead_ids)], device=input_device(model))
    ck = cache_kwarg(model)
    with observe(model, evictor), sparse_prefill(model, sparse, n, evictor.window) as sparsity:
        model(input_ids=ids, use_cache=True, logits_to_keep=1, **{ck: cache})
    missing = [i for i, d in enumerate(evictor.done) if not d]
    if missing:
        raise RuntimeError(f"layers {missing} were not compressed: their attention did not pass draft_rag.attention")
    out = model(
        input_ids=torch.tensor([[last]], device=input_device(model)),
        position_ids=torch.tensor([[n]], device=input_device(model)),
        use_cache=True,
        **{ck: cache},
    )
    stats = KVStats(
        entries=_entries(cache),
        kept=evictor.kept,
        kv_bytes=kv_bytes(cache),
        kv_bytes_full=_full_bytes(cache, full_entries),
        seconds={"prefill": time.perf_counter() - t0, "select": evictor.seconds},
        sparse_layers=sparsity.layers,
    )
    return Prefilled(cache, out.logits[0, -1], n + 1), stats


def _full_bytes(cache, full_entries: list[int]) -> int:
    """KV bytes the cache would hold with ``full_entries`` entries per layer (what a plain prefill keeps)."""
    per_entry = [
        (layer.keys.numel() + layer.values.numel()) // max(1, layer.keys.shape[-2]) * layer.keys.element_size()
        for layer in cache.layers
    ]
    return sum(e * f for e, f in zip(per_entry, full_entries))


def plain_prefill_stats(
    model, input_ids: list[int], sparse: SparsePrefillConfig | None = None
) -> tuple[Prefilled, KVStats]:
    """``generation.plain_prefill`` with the same KV statistics (nothing evicted); ``sparse``: vertical-slash
    sparse, its columns chosen by the prompt's last ``sparse.estimate_queries`` tokens."""
    t0 = time.perf_counter()
    window = sparse.estimate_queries if sparse else 0
    with sparse_prefill(model, sparse, len(input_ids), window) as sparsity:
        state = plain_prefill(model, input_ids)
    size = kv_bytes(state.cache)
    return state, KVStats(
        entries=_entries(state.cache),
        kept=[],
        kv_bytes=size,
        kv_bytes_full=size,
        seconds={"prefill": time.perf_counter() - t0, "select": 0.0},
        sparse_layers=sparsity.layers,
    )


@torch.no_grad()
def draft_lookahead(
    model, input_ids: list[int], n_tokens: int, eos_ids: set[int] = frozenset(), cache=None, start: int = 0
) -> list[int]:
    """Up to ``n_tokens`` greedy draft tokens after ``input_ids`` (stops before an end-of-sequence token).
    ``cache`` may already hold the KV of ``input_ids[:start]`` (``scoring.cached_prefix``: from the context cache)."""
    if n_tokens <= 0:
        return []
    cache = DynamicCache(config=model.config) if cache is None else cache
    ck, out = cache_kwarg(model), []
    rest = torch.tensor([input_ids[start:]], device=input_device(model))
    logits = model(input_ids=rest, use_cache=True, logits_to_keep=1, **{ck: cache}).logits[0, -1]
    for step in range(n_tokens):
        tok = int(logits.argmax())
        if tok in eos_ids:
            break
        out.append(tok)
        if step + 1 == n_tokens:
            break
        res = model(
            input_ids=torch.tensor([[tok]], device=input_device(model)),
            position_ids=torch.tensor([[len(input_ids) + step]], device=input_device(model)),
            use_cache=True,
            **{ck: cache},
        )
        logits = res.logits[0, -1]
    return out


def same_vocabulary(a, b) -> bool:
    """Whether two tokenizers map text to the same ids (then lookahead ids can travel as ids)."""
    return a is b or (type(a) is type(b) and len(a) == len(b) and a.get_vocab() == b.get_vocab())


def lookahead_for_target(
    draft_tokenizer, target_tokenizer, ids: list[int], eos_ids: set[int] = frozenset()
) -> list[int]:
    """Draft lookahead ids in the target's tokenizer: as ids when the vocabularies match, else as text
    (untrusted: never turned into special tokens). End-of-sequence ids are dropped."""
    ids = [i for i in ids if i not in eos_ids]
    if same_vocabulary(draft_tokenizer, target_tokenizer):
        return ids
    text = draft_tokenizer.decode(ids, skip_special_tokens=True)
    return tokenize(target_tokenizer, [Segment(text, "context")]).ids if text else []
