"""SpecPC: keep the prompt tokens the draft attends to, return compressed text with provenance."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .blocks import score_blocks
from .chunk_cache import ChunkCache
from .config import SpecPCConfig
from .context_cache import ContextCache
from .faithfulness import unsupported
from .prompt import Chunk, Segment, Tokenized, count_tokens, tokenize, wrap
from .scoring import draft_scores, pool
from .units import Unit, gap_mark, render, select_units, split_units, unit_of


@dataclass
class ChunkResult:
    """What survived of one context chunk; ``kept_spans`` are character spans inside ``original``."""

    id: Any
    metadata: dict
    original: str
    text: str
    kept_spans: list[tuple[int, int]]
    kept_fraction: float
    score: float


@dataclass
class CompressedPrompt:
    """Compressed text plus provenance. Token counts use the target's tokenizer when one was given."""

    text: str
    original_text: str
    kept_spans: list[tuple[int, int]]  # character spans of original_text: render(original_text, kept_spans, gap)
    chunks: list[ChunkResult]
    original_tokens: int
    compressed_tokens: int
    draft_original_tokens: int
    draft_kept_tokens: int
    lookahead_text: str = ""
    lookahead_ids: list[int] = field(default_factory=list)
    token_scores: list[tuple[int, int, float]] = field(default_factory=list)  # (start, end, score) in original_text
    seconds: dict = field(default_factory=dict)
    draft_blocks: int = 0  # draft passes over the prompt: 0 when it was within budget, >1 in block mode
    draft_cached_tokens: int = 0  # prompt tokens whose draft KV came from the engine's context cache
    left_whole: str = ""  # budget="auto": why a prompt that fits the window was not compressed
    unsupported: int = 0  # statements of the kept text that its source does not make (``faithfulness``)
    gap: str = ""  # the mark between kept spans that are not adjacent ("": joined end to end)

    @property
    def ratio(self) -> float:
        return self.compressed_tokens / max(1, self.original_tokens)

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "original_tokens": self.original_tokens,
            "compressed_tokens": self.compressed_tokens,
            "kept_spans": [list(s) for s in self.kept_spans],
            "seconds": self.seconds,
            "draft_blocks": self.draft_blocks,
            "draft_cached_tokens": self.draft_cached_tokens,
            "left_whole": self.left_whole,
            "unsupported": self.unsupported,
            "chunks": [
                {
                    "id": c.id,
                    "kept_fraction": c.kept_fraction,
                    "score": c.score,
                    "kept_spans": [list(s) for s in c.kept_spans],
                }
                for c in self.chunks
            ],
        }


def _neighbour_offsets(n: int) -> np.ndarray:
    """0, -1, +1, -2, +2, ... : a position followed by its ``n`` nearest neighbours."""
    steps = np.arange(1, n // 2 + 2)
    return np.concatenate([[0], np.stack([-steps, steps], 1).reshape(-1)[:n]])


def select(
    scores: np.ndarray, selectable: np.ndarray, required: np.ndarray, budget: int, neighbor_tokens: int
) -> np.ndarray:
    """Sorted positions to keep: ``required`` first, then the best-scored selectable positions, each with
    its ``neighbor_tokens`` nearest selectable neighbours, until exactly ``budget`` (or all) are kept."""
    keep = list(np.flatnonzero(required))
    room = budget - len(keep)
    if room < 0:
        raise ValueError(f"budget of {budget} tokens is smaller than the protected segments ({len(keep)} tokens)")
    candidates = np.flatnonzero(selectable & ~required)
    if room and len(candidates):
        ranked = candidates[np.argsort(-scores[candidates], kind="stable")]
        expanded = (ranked[:, None] + _neighbour_offsets(neighbor_tokens)[None, :]).reshape(-1)
        expanded = expanded[(expanded >= 0) & (expanded < len(scores))]
        expanded = expanded[selectable[expanded] & ~required[expanded]]
        _, first = np.unique(expanded, return_index=True)
        keep += list(expanded[np.sort(first)][:room])
    return np.sort(np.asarray(keep, dtype=np.int64))


def _spans(positions, offsets) -> list[tuple[int, int]]:
    """Merge the character spans of kept tokens into maximal spans."""
    return _merge([tuple(offsets[p]) for p in positions if offsets[p][1] > offsets[p][0]])


def compress(
    draft,
    tokenizer,
    segments: list[Segment],
    chunks: list[Chunk],
    cfg: SpecPCConfig,
    *,
    template: str = "chat",
    target_tokenizer=None,
    block_size: int | None = None,
    context_cache: ContextCache | None = None,
    chunk_cache: ChunkCache | None = None,
) -> CompressedPrompt:
    """Score ``segments`` with the draft and keep ``cfg``'s budget of tokens (SpecPC, Galim et al., arXiv 2506.08373).

    A prompt longer than ``block_size`` draft tokens (default ``blocks.DEFAULT_BLOCK_SIZE``, at most the
    draft's window) is scored in blocks (``blocks.score_blocks``); one selection runs over all of them.
    ``context_cache``: reuse the draft's KV of a context read before (``context_cache.ContextCache``);
    ``chunk_cache``: assemble it from chunks read before, in any order (``chunk_cache.ChunkCache``).
    """
    t0 = time.perf_counter()
    cfg = cfg.for_draft(draft)
    layout = wrap(segments, tokenizer, template)
    tok = tokenize(tokenizer, layout)
    roles = [layout[i].role for i in tok.segment]
    in_output = np.array([r != "template" for r in roles])
    protected = np.array([r not in ("context", "template") for r in roles])
    n_out, n_protected = int(in_output.sum()), int(protected.sum())
    budget = _first_budget(cfg, n_out, n_protected)
    starts, original = _output_offsets(layout)
    count_tokenizer = target_tokenizer or tokenizer
    if n_out <= budget:  # nothing to do: unchanged, the draft is not run
        positions = np.flatnonzero(in_output)
        result = _assemble(layout, tok, positions, None, starts, original, chunks, count_tokenizer)
        result.seconds = {"draft": 0.0, "select": time.perf_counter() - t0}
        return result
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    t1 = time.perf_counter()
    is_context = [r == "context" for r in roles]
    bound = chunk_cache.bind(draft, tok.ids, is_context, tok.segment) if chunk_cache is not None else None
    store = bound or context_cache
    dp, n_blocks = score_blocks(draft, tok.ids, is_context, cfg, eos, block_size, draft_scores, store)
    t2 = time.perf_counter()
    scores = dp.scores.numpy()
    pooled = pool(dp.scores, cfg.pool_type, cfg.kernel_size).numpy()
    if cfg.coverage is not None:
        budget = adaptive_budget(pooled, in_output & ~protected, n_protected, cfg)
    keep, spans = _keep(layout, tok, pooled, in_output, protected, budget, cfg, tokenizer)
    gap = cfg.gap if spans is not None else ""
    result = _assemble(layout, tok, keep, scores, starts, original, chunks, count_tokenizer, spans, gap)
    result.lookahead_ids = dp.lookahead_ids
    result.lookahead_text = tokenizer.decode(dp.lookahead_ids, skip_special_tokens=True)
    result.seconds = {"draft": t2 - t1, "select": (t1 - t0) + (time.perf_counter() - t2)}
    result.draft_blocks, result.draft_cached_tokens = n_blocks, dp.cached_tokens
    return result


def _first_budget(cfg: SpecPCConfig, n_out: int, n_protected: int) -> int:
    """Draft tokens to keep, before the draft runs: ``ratio`` is the fraction of the compressible context kept;
    adaptive (``coverage``) is set from the draft's scores later, unless its floor keeps everything."""
    if cfg.coverage is not None:
        return n_out if (cfg.floor or 0) >= n_out else n_out - 1
    if cfg.ratio is not None:
        return n_protected + cfg.budget_for(n_out - n_protected)
    return cfg.budget_for(n_out)


def _keep(layout, tok, pooled, in_output, protected, budget: int, cfg: SpecPCConfig, tokenizer):
    """Positions kept, and (unit granularities) the kept character spans: protected text, then the question
    window (SpecPC's last ``window_size`` tokens, as far as the budget allows), then the best-scored rest."""
    out_idx = np.flatnonzero(in_output)
    window = np.zeros_like(in_output)
    room_for_window = max(0, budget - int(protected.sum()))
    window[out_idx[len(out_idx) - min(cfg.window_size, room_for_window) :]] = True
    if cfg.granularity == "token":
        return select(pooled, in_output & ~protected, protected | window, budget, cfg.neighbor_tokens), None
    return select_in_units(layout, tok, pooled, protected, window, budget, cfg, tokenizer)


def adaptive_budget(pooled: np.ndarray, selectable: np.ndarray, n_protected: int, cfg: SpecPCConfig) -> int:
    """The protected tokens plus the fewest selectable ones whose pooled scores reach ``cfg.coverage`` of all the
    selectable tokens' scores, then within ``cfg.floor`` and ``cfg.ceiling``."""
    scores = np.sort(np.clip(pooled[selectable], 0, None))[::-1]
    total = float(scores.sum())
    k = len(scores) if total <= 0 else int(np.searchsorted(np.cumsum(scores) / total, cfg.coverage)) + 1
    budget = n_protected + min(k, len(scores))
    if cfg.floor is not None:
        budget = max(budget, cfg.floor)
    if cfg.ceiling is not None:
        budget = min(budget, cfg.ceiling)
    return min(budget, n_protected + len(scores))


def _output_offsets(layout: list[Segment]) -> tuple[list[int | None], str]:
    """Start of each output segment inside the original prompt text, and that text."""
    starts, pos = [], 0
    for s in layout:
        starts.append(pos if s.in_output else None)
        pos += len(s.text) if s.in_output else 0
    return starts, "".join(s.text for s in layout if s.in_output)


def select_in_units(layout, tok: Tokenized, pooled, protected, window, budget: int, cfg: SpecPCConfig, tokenizer):
    """SpecPC in whole units (``cfg.granularity``): the kept token positions and, per context segment, the
    kept character spans. A unit scores its best pooled token and costs its tokens (a token belongs to the unit
    that holds its last character); units holding a ``window`` token come first where they fit;
    each protected segment is kept (a unit of cost 0 here: its tokens are counted up front), so the gap marks
    that the budget pays for are exactly those of the output."""
    room = budget - int(protected.sum())
    if room < 0:
        raise ValueError(f"budget of {budget} tokens is smaller than the protected segments ({budget - room} tokens)")
    units, owner, unit_tokens, token_unit = _units_of(layout, tok, cfg.granularity)
    fixed = {u for u, g in enumerate(owner) if layout[g].role != "context"}
    costs = [0 if u in fixed else len(t) for u, t in enumerate(unit_tokens)]
    scores = [float(pooled[t].max()) if t else -np.inf for t in unit_tokens]
    for u in {int(token_unit[p]) for p in np.flatnonzero(window)} - {-1}:  # the window's units first, where they fit
        scores[u] = np.inf
    gap_cost = count_tokens(tokenizer, gap_mark("\n", cfg.gap)) if cfg.gap else 0
    kept = select_units(costs, scores, [u.needs for u in units], sorted(fixed), room, gap_cost)
    keep = sorted(set(np.flatnonzero(protected)) | {p for u in kept for p in unit_tokens[u]})
    spans: dict[int, list[tuple[int, int]]] = {}
    for u in kept:
        if layout[owner[u]].role == "context":
            spans.setdefault(owner[u], []).append((units[u].start, units[u].end))
    return np.asarray(keep, dtype=np.int64), {g: _merge(s) for g, s in spans.items()}


def _units_of(layout, tok: Tokenized, granularity: str):
    """The output's units in order: each context segment's (``split_units``) and each protected segment whole;
    with the segment that owns each, each unit's token positions and each token's unit (-1: none)."""
    units, owner, unit_tokens = [], [], []
    token_unit = np.full(len(tok.segment), -1)
    segment_of = np.asarray(tok.segment)
    for g, seg in enumerate(layout):
        if not seg.in_output or not seg.text:
            continue
        own = split_units(seg.text, granularity) if seg.role == "context" else [Unit(0, len(seg.text))]
        first, unit_starts = len(units), [u.start for u in own]
        units += [Unit(u.start, u.end, tuple(first + n for n in u.needs)) for u in own]
        owner += [g] * len(own)
        unit_tokens += [[] for _ in own]
        for p in np.flatnonzero(segment_of == g):
            u = first + unit_of(own, unit_starts, *tok.offsets[p])
            token_unit[p] = u
            unit_tokens[u].append(p)
    return units, owner, unit_tokens, token_unit


def _assemble(
    layout, tok: Tokenized, keep, scores, starts, original, chunks, count_tokenizer, unit_spans=None, gap=""
) -> CompressedPrompt:
    """The compressed prompt from the kept token positions ``keep`` (or, in unit mode, each context segment's
    ``unit_spans``, gap-marked with ``gap``)."""
    by_segment: dict[int, list[int]] = {}
    for p in keep:
        by_segment.setdefault(tok.segment[p], []).append(p)
    tokens_of: dict[int, list[int]] = {}
    for p, g in enumerate(tok.segment):
        tokens_of.setdefault(g, []).append(p)
    kept_spans, chunk_results, n_unsupported = [], {}, 0
    for i, seg in enumerate(layout):
        if not seg.in_output:
            continue
        if seg.protected:
            spans = [(0, len(seg.text))]
        elif unit_spans is not None:
            spans = unit_spans.get(i, [])
        else:
            spans = _spans(by_segment.get(i, []), tok.offsets)
        piece = render(seg.text, spans, gap)
        if not seg.protected:
            n_unsupported += len(unsupported(piece, seg.text, gap))
        kept_spans += [(starts[i] + s, starts[i] + e) for s, e in spans]
        if seg.chunk is not None:
            positions = tokens_of.get(i, [])
            n_kept = len(by_segment.get(i, []))
            score = float(scores[positions].max()) if scores is not None and positions else 1.0
            c = chunks[seg.chunk]
            chunk_results[seg.chunk] = ChunkResult(
                c.id, c.metadata, c.text, piece, spans, n_kept / max(1, len(positions)), score
            )
    kept_spans = _merge(kept_spans)
    text = render(original, kept_spans, gap)
    token_scores = (
        []
        if scores is None
        else [
            (starts[g] + s, starts[g] + e, float(scores[p]))
            for p, (g, (s, e)) in enumerate(zip(tok.segment, tok.offsets))
            if starts[g] is not None and e > s
        ]
    )
    return CompressedPrompt(
        text=text,
        original_text=original,
        kept_spans=kept_spans,
        chunks=[
            chunk_results.get(i) or ChunkResult(c.id, c.metadata, c.text, "", [], 0.0, 0.0)
            for i, c in enumerate(chunks)
        ],
        original_tokens=count_tokens(count_tokenizer, original),
        compressed_tokens=count_tokens(count_tokenizer, text),
        draft_original_tokens=sum(1 for g in tok.segment if starts[g] is not None),
        draft_kept_tokens=len(keep),
        token_scores=token_scores,
        unsupported=n_unsupported,
        gap=gap,
    )


def _merge(spans):
    out: list[tuple[int, int]] = []
    for s, e in spans:
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out
