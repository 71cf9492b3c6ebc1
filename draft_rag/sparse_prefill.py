"""Vertical-slash sparse prefill for a local target (the paper's SpecKV prefill; MInference's pattern).

In every full-attention layer of a long prefill, the last queries (SpecKV's window and the draft's lookahead,
or the prompt's last ``estimate_queries`` tokens) score every key, as SpecKV scores them. The queries are
then computed in blocks of ``query_block``: each block attends to the ``prefill_vertical_size`` best-scored
keys before its band (the vertical lines) and to the band itself (the slash lines: the ``prefill_window_size``
keys before the block and the block, causally). Nothing of size N x N is built: a block reads at most
``vertical + window + block`` keys per head, so time and memory grow linearly with the prompt. With every key
selected (``prefill_vertical_size`` at least the prompt) the result is dense attention.

The kernel runs through ``attention.use_kernel``, under any attention implementation: blocks go to torch's
``scaled_dot_product_attention`` one at a time, or, on CUDA in half precision with flash-attn installed, all of a
layer's blocks to one ``flash_attn_varlen_func`` call. Sliding-window layers,
soft-capped logits, attention sinks, batches and decoding steps use the model's own kernel.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import use_kernel, window_probs
from .config import SparsePrefillConfig
from .scoring import pool

logger = logging.getLogger(__name__)

SPARSE_METHODS = ("full", "speckv", "speckv-pc")  # the methods whose target prefill a bench runs sparse too
KERNEL_SIZE = 7  # max-pooling of the column scores along the keys, as SpecKV's default


@dataclass
class SparseStats:
    """What one prefill did: how many layer calls ran sparse and how many keys each query read at most."""

    layers: int = 0
    max_keys: int = 0


class VerticalSlash:
    """An ``attention.Kernel`` for one prefill of ``n_prompt`` prompt tokens (lookahead tokens may follow).

    ``window``: how many prompt tokens at the end are scoring queries; with the lookahead after them they
    choose the vertical columns among the keys before them.
    """

    def __init__(self, cfg: SparsePrefillConfig, n_prompt: int, window: int, stats: SparseStats):
        self.cfg, self.n_prompt, self.window, self.stats = cfg, n_prompt, window, stats

    def applies(self, query, key, kwargs) -> bool:
        n = query.shape[2]
        return (
            n > self.cfg.min_tokens
            and key.shape[2] == n  # a prefill from an empty cache
            and query.shape[0] == 1
            and 0 < self.window < self.n_prompt <= n
            and not kwargs.get("sliding_window")
            and not kwargs.get("softcap")
            and kwargs.get("s_aux") is None
        )

    def __call__(self, own, module, query, key, value, attention_mask, **kwargs):
        if not self.applies(query, key, kwargs):
            return own(module, query, key, value, attention_mask, **kwargs)
        scores = self.column_scores(query, key, attention_mask, kwargs)
        scale = kwargs.get("scaling") or query.shape[-1] ** -0.5
        out, widest = vertical_slash(query, key, value, scores, self.cfg, scale)
        self.stats.layers += 1
        self.stats.max_keys = max(self.stats.max_keys, widest)
        return out.transpose(1, 2).contiguous(), None

    def column_scores(self, query, key, attention_mask, kwargs) -> torch.Tensor:
        """``[1, Hkv, N]``: the scoring queries' attention to each key (max over the GQA group and the queries,
        max-pooled along keys); keys at or after the scoring window score +inf (the band covers them)."""
        n, cut = query.shape[2], self.n_prompt - self.window
        probs = window_probs(query, key, attention_mask, kwargs, n - cut)[..., :cut]
        scores = pool(probs.amax(dim=(2, 3)), "max", KERNEL_SIZE)
        return F.pad(scores, (0, n - cut), value=float("inf"))


def vertical_slash(query, key, value, scores, cfg: SparsePrefillConfig, scale: float) -> tuple[torch.Tensor, int]:
    """Causal attention of ``query`` ``[1, Hq, N, D]`` over ``key``/``value`` ``[1, Hkv, N, D]`` restricted to
    the vertical-slash pattern chosen by ``scores`` ``[1, Hkv, N]``. Returns ``[1, Hq, N, Dv]`` and the most keys
    one query block read. On CUDA in half precision with flash-attn installed every block runs in one
    ``flash_attn_varlen_func`` call; elsewhere each block is one ``scaled_dot_product_attention`` call."""
    n, block = query.shape[2], cfg.query_block
    spans = [(start, min(n, start + block)) for start in range(0, n, block)]
    varlen = varlen_kernel(query)
    if varlen is not None:
        blocks = [_block_keys(key, value, scores, start, end, cfg) for start, end in spans]
        return _packed(varlen, query, spans, blocks, scale), max(k.shape[2] for k, _ in blocks)
    gqa = query.shape[1] != key.shape[1]
    out = query.new_empty(*query.shape[:3], value.shape[-1])
    widest = 0
    for start, end in spans:
        keys, values = _block_keys(key, value, scores, start, end, cfg)
        width = keys.shape[2]
        causal = torch.ones(end - start, width, dtype=torch.bool, device=query.device).tril_(width - (end - start))
        out[:, :, start:end] = F.scaled_dot_product_attention(
            query[:, :, start:end], keys, values, attn_mask=causal, scale=scale, enable_gqa=gqa
        )
        widest = max(widest, width)
    return out, widest


def _block_keys(key, value, scores, start: int, end: int, cfg: SparsePrefillConfig):
    """The keys and values the queries ``[start, end)`` read, in position order: per KV head the
    ``prefill_vertical_size`` best-scored keys before the band, then the band ``[start - window, end)``."""
    near = max(0, start - cfg.prefill_window_size)
    keys, values = key[:, :, near:end], value[:, :, near:end]
    far = min(cfg.prefill_vertical_size, near)
    if far:
        idx = scores[..., :near].topk(far, dim=-1).indices.sort(dim=-1).values[..., None]
        keys = torch.cat([key.gather(2, idx.expand(-1, -1, -1, key.shape[-1])), keys], dim=2)
        values = torch.cat([value.gather(2, idx.expand(-1, -1, -1, value.shape[-1])), values], dim=2)
    return keys, values


def varlen_kernel(query):
    """flash-attn's ``flash_attn_varlen_func`` when it can run on ``query`` (CUDA, fp16/bf16, installed), else None."""
    if not query.is_cuda or query.dtype not in (torch.float16, torch.bfloat16):
        return None
    return flash_varlen()


@functools.cache
def flash_varlen():
    """``flash_attn_varlen_func``, imported once; a failed import is logged once with its reason, then None."""
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception as exc:  # noqa: BLE001 - not installed, or built against another torch (OSError, symbols)
        logger.warning(
            "flash-attn cannot be imported (%s: %s): the sparse prefill runs its blocks through torch SDPA instead",
            type(exc).__name__,
            exc,
        )
        return None
    return flash_attn_varlen_func


def _packed(varlen, query, spans, blocks, scale: float) -> torch.Tensor:
    """All query blocks in one varlen call: block i's queries and its keys are sequence i of the packed batch.
    Causal masks in flash-attn align to the end of each sequence's keys, where the block's own keys are."""
    q_lens = torch.tensor([0] + [end - start for start, end in spans], device=query.device)
    k_lens = torch.tensor([0] + [k.shape[2] for k, _ in blocks], device=query.device)
    flat = lambda t: t[0].transpose(0, 1)  # noqa: E731  [1, H, L, D] -> [L, H, D]
    out = varlen(
        flat(query),
        torch.cat([flat(k) for k, _ in blocks]),
        torch.cat([flat(v) for _, v in blocks]),
        q_lens.cumsum(0, dtype=torch.int32),
        k_lens.cumsum(0, dtype=torch.int32),
        int(q_lens.max()),
        int(k_lens.max()),
        softmax_scale=scale,
        causal=True,
    )
    return out.transpose(0, 1)[None]


@contextlib.contextmanager
def sparse_prefill(model, cfg: SparsePrefillConfig | None, n_prompt: int, window: int):
    """Inside the block, ``model``'s long prefills are vertical-slash sparse; yields their ``SparseStats``.

    ``n_prompt``: the prompt tokens of the prefill (lookahead tokens may follow them); ``window``: how many of
    the prompt's last tokens score the keys. With ``cfg`` None the block runs the model's own attention.
    """
    stats = SparseStats()
    if cfg is None:
        yield stats
        return
    with use_kernel(model, VerticalSlash(cfg, n_prompt, window, stats)):
        yield stats
