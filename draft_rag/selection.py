"""Which chunks to keep: the selection rule on draft scores, and ``prune_chunks``, the one chunk pruner behind
both frameworks' (LangChain's document compressor, LlamaIndex's node postprocessor)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from .config import check_budget, check_int
from .models import LoadedModel
from .prompt import Chunk, count_tokens
from .specpc import CompressedPrompt


class ChunkReader(Protocol):
    """What ``prune_chunks`` uses of a ``DraftEngine``: its draft, chunk scores and SpecPC."""

    draft: LoadedModel

    def score_chunks(self, chunks, *, question=None, instruction=None) -> list[float]: ...

    def compress(self, prompt=None, **parts) -> CompressedPrompt: ...


@dataclass
class KeptChunk:
    """One chunk that survived pruning: its position in the input, its (maybe shortened) text and provenance."""

    index: int
    text: str
    score: float  # the draft's score of the whole chunk
    kept_spans: list[tuple[int, int]]  # character spans of the original text
    kept_fraction: float


@dataclass
class PrunedChunks:
    """``kept`` in input order; ``scores`` of every input chunk; token counts in the draft's tokenizer."""

    kept: list[KeptChunk]
    scores: list[float]
    original_tokens: int = 0
    compressed_tokens: int = 0
    seconds: dict = field(default_factory=dict)
    compressed: CompressedPrompt | None = None  # SpecPC's result with compress_tokens=True


def check_pruning(top_n=None, threshold=None, budget=None, ratio=None, compress_tokens: bool = False) -> None:
    """Raise ``ValueError`` naming the argument for settings ``prune_chunks`` cannot run with."""
    select_chunks([], [], top_n=top_n, budget=budget, ratio=ratio, threshold=threshold)
    if compress_tokens and budget is None and ratio is None:
        raise ValueError("compress_tokens=True needs budget=<tokens> or ratio=<fraction> for SpecPC")


def prune_chunks(
    engine: ChunkReader,
    chunks: list,
    question: str,
    *,
    instruction: str | None = None,
    top_n: int | None = None,
    threshold: float | None = None,
    budget: int | None = None,
    ratio: float | None = None,
    compress_tokens: bool = False,
    score_texts: list[str] | None = None,
) -> PrunedChunks:
    """Score ``chunks`` (strings or ``Chunk``) in one draft pass, keep them by ``select_chunks``'s rule and,
    with ``compress_tokens``, spend ``budget``/``ratio`` with SpecPC inside the kept chunks instead of on whole
    ones. A chunk SpecPC cuts down to blank text is dropped; chunks blank from the start are kept as they are.
    ``score_texts``: what the draft reads to score (and size) each chunk, when it is not the chunk's text (e.g. a
    node's text with its metadata); SpecPC always compresses the chunk's own text."""
    check_pruning(top_n, threshold, budget, ratio, compress_tokens)
    texts = [c.text if isinstance(c, Chunk) else c for c in chunks]
    read = texts if score_texts is None else list(score_texts)
    if len(read) != len(texts):
        raise ValueError(f"score_texts must have one text per chunk: {len(read)} for {len(texts)} chunks")
    t0 = time.perf_counter()
    scores = engine.score_chunks(read, question=question, instruction=instruction) if read else []
    seconds = {"draft": time.perf_counter() - t0}
    tokenizer = engine.draft.tokenizer
    sizes = [count_tokens(tokenizer, t) for t in read]
    whole = not compress_tokens
    keep = select_chunks(
        scores,
        sizes,
        top_n=top_n,
        threshold=threshold,
        budget=budget if whole else None,
        ratio=ratio if whole else None,
    )
    if whole or not any(texts[i].strip() for i in keep):
        kept = [KeptChunk(i, texts[i], scores[i], [(0, len(texts[i]))] if texts[i] else [], 1.0) for i in keep]
        return PrunedChunks(kept, scores, sum(sizes), sum(sizes[i] for i in keep), seconds)
    shortened = engine.compress(
        chunks=[Chunk(texts[i], id=i) for i in keep], question=question, instruction=instruction, budget=budget,
        ratio=ratio,
    )  # fmt: skip
    kept = [
        KeptChunk(c.id, c.text, scores[c.id], list(c.kept_spans), c.kept_fraction)
        for c in shortened.chunks
        if c.text.strip() or not c.original.strip()
    ]
    seconds = {"draft": seconds["draft"] + shortened.seconds["draft"], "select": shortened.seconds["select"]}
    compressed = sum(count_tokens(tokenizer, c.text) for c in shortened.chunks)
    return PrunedChunks(kept, scores, sum(sizes), compressed, seconds, shortened)


def select_chunks(
    scores: list[float],
    sizes: list[int],
    *,
    top_n: int | None = None,
    budget: int | None = None,
    ratio: float | None = None,
    threshold: float | None = None,
) -> list[int]:
    """Indices (in input order) of the chunks to keep, given draft ``scores`` and token ``sizes``.

    Filters apply in turn: ``threshold`` (score >= it), ``top_n`` best, then a token ``budget`` (or
    ``ratio`` of all tokens) filled greedily from the best chunk down, skipping chunks that no longer fit;
    the best remaining chunk is always kept. With no filters every chunk is kept.
    """
    if len(scores) != len(sizes):
        raise ValueError(f"scores and sizes must have the same length, got {len(scores)} and {len(sizes)}")
    check_int("top_n", top_n, 1, allow_none=True)
    check_budget(budget, ratio)
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties keep input order
    if threshold is not None:
        ranked = [i for i in ranked if scores[i] >= threshold]
    if top_n is not None:
        ranked = ranked[:top_n]
    if ratio is not None:
        budget = max(1, round(ratio * sum(sizes)))
    if budget is not None and ranked:
        kept, used = [ranked[0]], sizes[ranked[0]]
        for i in ranked[1:]:
            if used + sizes[i] <= budget:
                kept.append(i)
                used += sizes[i]
        ranked = kept
    return sorted(ranked)
