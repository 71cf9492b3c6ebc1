"""Draft scoring of prompts longer than one draft pass: the context is cut into blocks that fit.

Each pass reads ``head + one block of context + tail``: the head is everything before the first context
token (template start, instruction), the tail everything after the last one (question, answer prefix,
template end). So the draft's window queries are always the question, and since every pass has the same
head, tail and (near-)equal block length, scores from different blocks are comparable and one global
selection runs over all of them. Time grows linearly with the prompt (one pass per block) and peak memory
is that of one pass, whatever the number of blocks.

The lookahead is not drafted in block mode: a block holds only part of the context, so its guess at the
answer would come from a fragment. Scores then come from the question window alone and ``lookahead_ids``
is empty (SpecKV-PC drafts its lookahead from the compressed prompt instead).
"""

from __future__ import annotations

import math

import torch

from .chunk_cache import ChunkPrompt
from .config import SpecPCConfig, check_int
from .context_cache import ContextCache
from .models import context_window
from .scoring import DraftPass, draft_scores

DEFAULT_BLOCK_SIZE = 2048  # tokens per draft pass; see README "Long prompts" for the measurement
MIN_BLOCK_CONTEXT = 64  # a pass must leave at least this many positions for context
TAIL_SHARE = 8  # the tail's room in a pass grows in steps of an eighth of it (256 tokens of 2048)


def block_size_for(model, block_size: int | None = None) -> int:
    """Tokens per draft pass: ``block_size`` (default ``DEFAULT_BLOCK_SIZE``), never more than the window."""
    window = context_window(model)
    if block_size is None:
        return min(DEFAULT_BLOCK_SIZE, window) if window else DEFAULT_BLOCK_SIZE
    check_int("block_size", block_size, 2 * MIN_BLOCK_CONTEXT)
    if window and block_size > window:
        raise ValueError(f"block_size={block_size} exceeds the draft's context window of {window} tokens")
    return block_size


def split(n: int, head: int, tail: int, size: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` token ranges of near-equal blocks covering ``head .. n - tail``, each fitting ``size`` with
    the head and tail around it.

    The tail's room is rounded up to a multiple of ``size // TAIL_SHARE`` tokens, so every question up to that
    length (and a conversation's later turns, within each such step) cuts a context at the same places: a
    follow-up question finds each block's draft KV in the context cache.
    """
    step = max(1, size // TAIL_SHARE)
    room = size - head - step * math.ceil(max(tail, 1) / step)
    if room < MIN_BLOCK_CONTEXT:  # a long head: the tail gets no more than it needs
        room = size - head - tail
    if room < MIN_BLOCK_CONTEXT:
        raise ValueError(
            f"the protected text around the context ({head} tokens before it, {tail} after it) "
            f"leaves {room} of the draft's {size} tokens per pass for context (needs at least "
            f"{MIN_BLOCK_CONTEXT}); shorten the instruction or question, or raise block_size"
        )
    middle = n - head - tail
    k = max(1, math.ceil(middle / room))
    return [(head + middle * i // k, head + middle * (i + 1) // k) for i in range(k)]


def score_blocks(
    model,
    ids: list[int],
    is_context: list[bool],
    cfg: SpecPCConfig,
    eos: set[int] | None = None,
    size: int | None = None,
    score=None,
    store: ContextCache | ChunkPrompt | None = None,
) -> tuple[DraftPass, int]:
    """Draft scores of ``ids`` and the number of passes: one ``score`` pass (``scoring.draft_scores``) if it
    fits ``size`` tokens, else blocks.

    ``is_context`` marks the compressible tokens; the head and tail (the rest before and after them) go
    into every pass, and their score is the max over passes. With an enabled ``store`` each pass's KV up to
    ``window_size`` tokens before the end of its context is reused from (or kept in) that ``ContextCache``, or
    assembled from a prompt's chunks (a ``chunk_cache.ChunkPrompt``).
    """
    size, score = block_size_for(model, size), score or draft_scores
    n = len(ids)
    ctx = [i for i, c in enumerate(is_context) if c]
    cached = store is not None and store.enabled

    def run(index: list[int], context_end: int, pass_cfg: SpecPCConfig) -> DraftPass:
        pass_ids = [ids[i] for i in index]
        if not cached:
            return score(model, pass_ids, pass_cfg, eos)
        pass_store = store.for_pass(index) if isinstance(store, ChunkPrompt) else store
        return score(model, pass_ids, pass_cfg, eos, prefix=context_end - cfg.window_size, store=pass_store)

    if n + cfg.lookahead_tokens <= size:
        return run(list(range(n)), ctx[-1] + 1 if ctx else 0, cfg), 1
    if not ctx:
        raise ValueError(
            f"the prompt is {n} tokens, more than the draft's {size} per pass, and has no compressible context to split"
        )
    head, tail = ctx[0], n - ctx[-1] - 1
    blocks = split(n, head, tail, size)
    no_lookahead = cfg.replace(lookahead_tokens=0)
    scores, reused = torch.zeros(n), 0
    for lo, hi in blocks:
        scored = run([*range(head), *range(lo, hi), *range(n - tail, n)], head + hi - lo, no_lookahead)
        s, reused = scored.scores, reused + scored.cached_tokens
        scores[lo:hi] = s[head : head + hi - lo]
        torch.maximum(scores[:head], s[:head], out=scores[:head])
        torch.maximum(scores[n - tail :], s[head + hi - lo :], out=scores[n - tail :])
    return DraftPass(scores, [], reused), len(blocks)
