"""Draft pass: one prefill (+ lookahead tokens) with window attention captured -> a score per token."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .attention import observe, window_probs
from .config import SpecPCConfig
from .context_cache import ContextCache
from .models import input_device


def cache_kwarg(model) -> str:
    """Name of the cache argument of ``model.forward`` (``cache`` in new transformers)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def num_layers(model) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return config.num_hidden_layers


class _Reducer:
    """Running reduction of per-layer ``[N]`` scores within a step, then across steps."""

    def __init__(self, n_prompt: int, cfg: SpecPCConfig):
        self.n, self.cfg = n_prompt, cfg
        self.total = n_prompt  # tokens seen so far, including the current step's
        self.step_acc: torch.Tensor | None = None
        self.step_layers = 0
        self.steps: list[torch.Tensor] = []

    def __call__(self, module, query, key, attention_mask, kwargs):
        if module.layer_idx < self.cfg.starting_layer_index:
            return
        probs = window_probs(query, key, attention_mask, kwargs, self.cfg.window_size)
        if query.shape[2] > 1 and self.cfg.weighted_query:  # prefill window: later queries count more
            w = probs.shape[3]
            probs.mul_(torch.linspace(0, 1, w, device=probs.device)[:, None])
        per_key = (probs.amax(dim=(1, 2, 3)) if self.cfg.reduction_type == "max" else probs.mean(dim=(1, 2, 3)))[0]
        # A sliding-window layer holds only the most recent keys: place them at their absolute positions.
        first = self.total - per_key.shape[0]
        scores = per_key.new_zeros(self.n)
        lo = max(0, -first)
        hi = min(per_key.shape[0], self.n - first)
        if hi > lo:
            scores[first + lo : first + hi] = per_key[lo:hi]
        self._add(scores)

    def _add(self, scores: torch.Tensor) -> None:
        if self.step_acc is not None and scores.device != self.step_acc.device:  # layers spread by a device_map
            scores = scores.to(self.step_acc.device)
        if self.step_acc is None:
            self.step_acc = scores.clone()
        elif self.cfg.reduction_type == "max":
            torch.maximum(self.step_acc, scores, out=self.step_acc)
        else:
            self.step_acc += scores
        self.step_layers += 1

    def end_step(self) -> None:
        if self.step_acc is None:
            return
        acc = self.step_acc if self.cfg.reduction_type == "max" else self.step_acc / self.step_layers
        self.steps.append(acc)
        self.step_acc, self.step_layers = None, 0

    def result(self) -> torch.Tensor:
        stacked = torch.stack(self.steps)
        return stacked.amax(0) if self.cfg.reduction_type == "max" else stacked.mean(0)


@dataclass
class DraftPass:
    scores: torch.Tensor  # [N] float32 on CPU, one per input token
    lookahead_ids: list[int]
    cached_tokens: int = 0  # prompt tokens whose draft KV came from the context cache


@torch.no_grad()
def cached_prefix(model, input_ids: list[int], prefix: int, store: ContextCache | None) -> tuple[object, int, int]:
    """A KV cache holding ``input_ids[:prefix]`` read by ``model``, taken from ``store`` or computed now and kept
    there, as ``(cache, start, cached_tokens)``: the caller runs ``input_ids[start:]`` on top. Every call with the
    same prefix splits there, hit or miss, so what follows does not depend on the store's state. Without an enabled
    store, or with ``prefix`` 0, the cache is empty and ``start`` 0."""
    cache = DynamicCache(config=model.config)
    if store is None or not store.enabled or not 0 < prefix < len(input_ids):
        return cache, 0, 0
    if not isinstance(store, ContextCache):  # a chunk cache bound to this prompt (``chunk_cache.ChunkPrompt``)
        return store.prefix(model, input_ids, prefix)
    key = store.key(model, input_ids[:prefix])
    hit = store.get(key)
    if hit is not None:
        return hit, prefix, prefix
    ids = torch.tensor([input_ids[:prefix]], device=input_device(model))
    model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_kwarg(model): cache})
    store.put(key, cache)
    return cache, prefix, 0


@torch.no_grad()
def draft_scores(
    model,
    input_ids: list[int],
    cfg: SpecPCConfig,
    eos_ids: set[int] | None = None,
    prefix: int = 0,
    store: ContextCache | None = None,
) -> DraftPass:
    """Run the draft over ``input_ids`` and score every input token.

    The draft generates ``cfg.lookahead_tokens`` greedy tokens (returned as ``lookahead_ids``); as in the
    official SpecPC, all but the last are fed back and their attention rows scored with the prefill window's.
    With a ``store`` (an enabled ``ContextCache``), the first ``prefix`` tokens (which must end at least
    ``cfg.window_size`` tokens before the end) are read in a pass of their own, their KV taken from or put into
    the store, so that a later prompt with the same prefix runs only the rest.
    """
    layers = num_layers(model)
    if cfg.starting_layer_index >= layers:
        raise ValueError(f"starting_layer_index={cfg.starting_layer_index} but the draft has only {layers} layers")
    device = input_device(model)
    reducer = _Reducer(len(input_ids), cfg)
    ck = cache_kwarg(model)
    ids = torch.tensor([input_ids], device=device)
    lookahead: list[int] = []
    # the prefix is read unobserved: the window queries are the rest's last ones
    usable = 0 < prefix <= len(input_ids) - cfg.window_size
    cache, start, cached = cached_prefix(model, input_ids, prefix if usable else 0, store)
    with observe(model, reducer):
        out = model(input_ids=ids[:, start:], use_cache=True, logits_to_keep=1, **{ck: cache})
        reducer.end_step()
        for _ in range(cfg.lookahead_tokens):
            nxt = int(out.logits[0, -1].argmax())
            lookahead.append(nxt)
            if (eos_ids and nxt in eos_ids) or len(lookahead) == cfg.lookahead_tokens:
                break
            pos = torch.tensor([[len(input_ids) + len(lookahead) - 1]], device=device)
            reducer.total += 1
            out = model(input_ids=torch.tensor([[nxt]], device=device), position_ids=pos, use_cache=True, **{ck: cache})
            reducer.end_step()
    return DraftPass(reducer.result().float().cpu(), lookahead, cached)


def pool(scores: torch.Tensor, pool_type: str, kernel_size: int) -> torch.Tensor:
    """Centred 1-D pooling along the last dimension (tokens or keys); the shape is kept."""
    if pool_type == "none" or kernel_size <= 1 or scores.shape[-1] == 0:
        return scores
    k = scores.shape[-1]
    x = scores.reshape(-1, 1, k)
    pad = kernel_size // 2
    if pool_type == "max":
        y = torch.nn.functional.max_pool1d(x, kernel_size, stride=1, padding=pad)
    else:
        y = torch.nn.functional.avg_pool1d(x, kernel_size, stride=1, padding=pad, count_include_pad=False)
    return y[..., :k].reshape(scores.shape)


def chunk_scores(
    token_scores: torch.Tensor,
    token_segment: list[int],
    segment_chunk: list[int | None],
    n_chunks: int,
    reduce: str = "max",
) -> list[float]:
    """Aggregate per-token draft scores into one score per chunk (``max`` or ``mean``); 0.0 for empty chunks."""
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    chunk_of = torch.tensor([-1 if segment_chunk[s] is None else segment_chunk[s] for s in token_segment])
    out = []
    for c in range(n_chunks):
        vals = token_scores[chunk_of == c]
        out.append(float(vals.max() if reduce == "max" else vals.mean()) if len(vals) else 0.0)
    return out
