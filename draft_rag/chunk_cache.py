"""Per-chunk draft KV: the draft reads each retrieved chunk once and reuses its KV wherever the chunk comes back.

A draft pass reads ``head + pieces + window``: the head is everything before the first retrieved chunk (template
start, instruction); each chunk and each separator between chunks is a piece. Outside the question window the
draft's KV is assembled from pieces, each encoded once after the head (keyed by the draft, the head's ids and
the piece's ids) and moved to its place in this prompt by re-applying the rotary embedding for the offset. Then
only the question window (and the lookahead) runs through the draft, scoring every token as the exact pass does.

A piece encoded without the chunks before it only approximates the exact pass (the first chunk after the head is
exact, so a one-chunk prompt scores identically). Models whose positions are not a plain rotary embedding (a
position table, or rotary scaling that depends on the length) fall back to the exact pass.
"""

from __future__ import annotations

import bisect

import torch
from transformers import DynamicCache

from .context_cache import ContextCache
from .models import input_device
from .scoring import cache_kwarg

SHIFTABLE_ROPE = ("default", "linear", "llama3", "yarn")  # rotary types whose angle is linear in the position


class ChunkCache(ContextCache):
    """LRU of per-piece draft KV (keys and values per layer), at most ``max_mb`` MiB (0: off). Thread-safe;
    ``hits`` and ``misses`` count pieces, ``fallbacks`` the passes of models it cannot shift."""

    def __init__(self, max_mb: float = 0):
        super().__init__(max_mb)
        self.fallbacks = 0

    _copy = staticmethod(lambda entry: entry)  # an entry's tensors are never changed in place
    _size = staticmethod(lambda entry: sum(t.numel() * t.element_size() for kv in entry for t in kv))

    def bind(self, model, ids: list[int], context: list[bool], segment: list[int]) -> ChunkPrompt | None:
        """This cache for one prompt (token ids, which are retrieved context, each token's segment); None when it
        cannot serve it: disabled, no context, or a model whose positions it cannot shift (a fallback)."""
        if not self.enabled or not any(context):
            return None
        if not shiftable(model):
            self.fallbacks += 1
            return None
        return ChunkPrompt(self, ids, pieces(context, segment))


def pieces(context: list[bool], segment: list[int]) -> list[int]:
    """Start positions of the pieces: the first context token, then every change of segment after it."""
    first = context.index(True)
    return [first] + [i for i in range(first + 1, len(segment)) if segment[i] != segment[i - 1]]


class ChunkPrompt:
    """A ``ChunkCache`` bound to one prompt; ``index`` maps a draft pass's positions to the prompt's tokens (block
    mode reads ``head + block + tail``)."""

    enabled = True

    def __init__(self, store: ChunkCache, ids: list[int], starts: list[int], index: list[int] | None = None):
        self.store, self.ids, self.starts = store, ids, starts
        self.index = index if index is not None else list(range(len(ids)))
        self.head = starts[0]

    def for_pass(self, index: list[int]) -> ChunkPrompt:
        return ChunkPrompt(self.store, self.ids, self.starts, index)

    @torch.no_grad()
    def prefix(self, model, input_ids: list[int], prefix: int) -> tuple[object, int, int]:
        """A KV cache of the pass's first ``prefix`` tokens assembled from pieces, as ``(cache, start, reused)``
        (``scoring.cached_prefix``'s contract)."""
        head = self.ids[: self.head]
        head_kv = self._piece(model, [], head)[0] if head else ()
        n = min(prefix, self.head)
        layers = [([k[..., :n, :]], [v[..., :n, :]]) for k, v in head_kv] or None
        reused = 0
        for lo, hi, at in self._runs(prefix):
            s = self.starts[bisect.bisect_right(self.starts, lo) - 1]
            nxt = bisect.bisect_right(self.starts, lo)
            e = self.starts[nxt] if nxt < len(self.starts) else len(self.ids)
            kv, hit = self._piece(model, head, self.ids[s:e], head_kv)
            reused += (hi - lo) if hit else 0
            layers = layers or [([], []) for _ in kv]
            for layer, ((ks, vs), (k, v)) in enumerate(zip(layers, kv)):
                ks.append(shift(model, k[..., lo - s : hi - s, :], at - lo + s - self.head, layer))
                vs.append(v[..., lo - s : hi - s, :])
        cache = DynamicCache(config=model.config)
        for layer, (ks, vs) in enumerate(layers or []):
            cache.update(torch.cat(ks, dim=-2), torch.cat(vs, dim=-2), layer)
        return cache, prefix, reused

    @torch.no_grad()
    def warm(self, model) -> int:
        """Encode every piece not in the store yet; returns how many were encoded."""
        head = self.ids[: self.head]
        head_kv = self._piece(model, [], head)[0] if head else ()
        ends = self.starts[1:] + [len(self.ids)]
        return sum(not self._piece(model, head, self.ids[s:e], head_kv)[1] for s, e in zip(self.starts, ends))

    def _runs(self, prefix: int) -> list[tuple[int, int, int]]:
        """``(lo, hi, at)``: prompt tokens ``lo:hi`` of one piece, at pass positions from ``at``, covering the
        pass's positions ``head:prefix``."""
        runs: list[tuple[int, int, int]] = []
        starts = set(self.starts)
        for pos in range(self.head, prefix):
            i = self.index[pos]
            if runs and runs[-1][1] == i and i not in starts and runs[-1][2] + i - runs[-1][0] == pos:
                runs[-1] = (runs[-1][0], i + 1, runs[-1][2])
            else:
                runs.append((i, i + 1, pos))
        return runs

    def _piece(self, model, head: list[int], ids: list[int], head_kv=()) -> tuple[tuple, bool]:
        """Per-layer (keys, values) of ``ids`` read after ``head`` (whose KV is ``head_kv``; positions from
        ``len(head)``), and whether they came from the store."""
        key = ContextCache.key(model, list(head) + [-1] + list(ids))
        hit = self.store.get(key)
        if hit is not None:
            return hit, True
        cache = DynamicCache()  # full layers: a piece's sliding-window layers keep every entry
        for layer, (k, v) in enumerate(head_kv):
            cache.update(k, v, layer)
        run = {"use_cache": True, "logits_to_keep": 1, cache_kwarg(model): cache}
        model(input_ids=torch.tensor([ids], device=input_device(model)), **run)
        kv = tuple((layer.keys[..., len(head) :, :], layer.values[..., len(head) :, :]) for layer in cache.layers)
        self.store.put(key, kv)
        return kv, False


def rotary(model):
    """The model's rotary embedding module, or None."""
    return getattr(getattr(model, "model", None), "rotary_emb", None)


def shiftable(model) -> bool:
    """Whether keys can be moved by re-applying the rotary embedding: every layer rotary, with a fixed frequency."""
    rot = rotary(model)
    if rot is None:
        return False
    kinds = rot.rope_type.values() if isinstance(rot.rope_type, dict) else [rot.rope_type]
    return all(k in SHIFTABLE_ROPE for k in kinds)


def shift(model, keys: torch.Tensor, delta: int, layer: int) -> torch.Tensor:
    """``keys`` (``[batch, heads, tokens, head_dim]``, rotary applied) moved ``delta`` positions later."""
    if delta == 0:
        return keys
    rot = rotary(model)
    inv_freq = getattr(rot, "inv_freq", None)
    if inv_freq is None:  # one rotary per layer type (Gemma-3: local and global)
        inv_freq = getattr(rot, f"{model.config.layer_types[layer]}_inv_freq")
    angle = delta * inv_freq.to(device=keys.device, dtype=torch.float32)
    cos, sin = torch.cat([angle, angle]).cos(), torch.cat([angle, angle]).sin()
    half = keys.shape[-1] // 2
    rotated = torch.cat([-keys[..., half:], keys[..., :half]], dim=-1)
    return (keys.float() * cos + rotated.float() * sin).to(keys.dtype)
