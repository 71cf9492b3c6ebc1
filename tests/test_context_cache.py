"""The draft context cache: follow-up questions over the same context reuse the draft's KV, with the same result."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import needle_prompt, tiny_model
from test_blocks import CFG as BLOCK_CFG
from test_blocks import real_text, short_window_model

from draft_rag import DraftEngine, SpecPCConfig, speckv
from draft_rag.context_cache import ContextCache

CFG = SpecPCConfig(starting_layer_index=0, window_size=8, kernel_size=8, neighbor_tokens=8)
QUESTIONS = ["What is the special magic number for ocean?", "Which colour is the grass?", "Where do we go?"]


def engine(mb: float = 64, model=None, cfg=CFG) -> DraftEngine:
    return DraftEngine(draft=model or tiny_model("llama"), specpc=cfg, context_cache_mb=mb)


def kept(result) -> tuple:
    return result.text, result.kept_spans, [c.kept_spans for c in result.chunks]


def test_a_follow_up_reuses_the_context_and_keeps_what_a_cold_run_keeps():
    text, _, _ = needle_prompt(60)
    warm = engine()
    first = warm.compress(text, question=QUESTIONS[0], ratio=0.3)
    assert first.draft_cached_tokens == 0 and len(warm.context_cache) == 1
    for q in QUESTIONS[1:]:
        follow = warm.compress(text, question=q, ratio=0.3)
        cold = engine().compress(text, question=q, ratio=0.3)
        assert follow.draft_cached_tokens > 0.9 * follow.draft_original_tokens
        assert kept(follow) == kept(cold) and cold.draft_cached_tokens == 0
    assert warm.context_cache.hits == 2


def test_block_scoring_reuses_every_block():
    model = short_window_model("llama")
    text = real_text()
    warm = engine(model=model, cfg=BLOCK_CFG)
    first = warm.compress(text, question=QUESTIONS[0], ratio=0.3)
    assert first.draft_blocks > 1 and len(warm.context_cache) == first.draft_blocks
    follow = warm.compress(text, question=QUESTIONS[1], ratio=0.3)
    cold = engine(model=model, cfg=BLOCK_CFG).compress(text, question=QUESTIONS[1], ratio=0.3)
    assert follow.draft_blocks == first.draft_blocks and warm.context_cache.hits == first.draft_blocks
    assert kept(follow) == kept(cold)


def test_a_context_changed_by_one_token_is_read_again():
    text, _, _ = needle_prompt(60)
    e = engine()
    e.compress(text, question=QUESTIONS[0], ratio=0.3)
    edited = text.replace("4728163", "4728164")
    changed = e.compress(edited, question=QUESTIONS[0], ratio=0.3)
    assert changed.draft_cached_tokens == 0 and e.context_cache.misses == 2
    assert kept(changed) == kept(engine().compress(edited, question=QUESTIONS[0], ratio=0.3))


def test_memory_bound_evicts_the_least_recently_used():
    texts = [needle_prompt(60, position=p)[0] for p in (0.2, 0.5, 0.8)]
    probe = engine()
    probe.compress(texts[0], question=QUESTIONS[0], ratio=0.3)
    one = probe.context_cache.nbytes / 2**20  # MiB of one context's entry
    e = engine(mb=2.5 * one)  # room for two entries
    for t in texts:
        e.compress(t, question=QUESTIONS[0], ratio=0.3)
        assert e.context_cache.nbytes <= e.context_cache.max_bytes
    assert len(e.context_cache) == 2
    assert e.compress(texts[0], question=QUESTIONS[1], ratio=0.3).draft_cached_tokens == 0  # evicted first
    assert e.compress(texts[2], question=QUESTIONS[1], ratio=0.3).draft_cached_tokens > 0
    small = engine(mb=0.5 * one)  # an entry larger than the bound is not kept
    small.compress(texts[0], question=QUESTIONS[0], ratio=0.3)
    assert len(small.context_cache) == 0 and small.context_cache.nbytes == 0


def test_off_and_bad_sizes():
    text, _, _ = needle_prompt(60)
    off = engine(mb=0)
    off.compress(text, question=QUESTIONS[0], ratio=0.3)
    assert off.compress(text, question=QUESTIONS[1], ratio=0.3).draft_cached_tokens == 0 and len(off.context_cache) == 0
    for bad in (-1, float("inf"), "1G", True):
        with pytest.raises(ValueError, match="context_cache_mb"):
            ContextCache(bad)


def test_concurrent_follow_ups_match_cold_runs():
    text, _, _ = needle_prompt(60)
    shared = engine()
    shared.compress(text, question=QUESTIONS[0], ratio=0.3)
    results: dict = {}

    def ask(i: int, q: str) -> None:
        results[i] = shared.compress(text, question=q, ratio=0.3)

    threads = [threading.Thread(target=ask, args=(i, QUESTIONS[i % 3])) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cold = {q: kept(engine().compress(text, question=q, ratio=0.3)) for q in QUESTIONS}
    assert all(kept(results[i]) == cold[QUESTIONS[i % 3]] for i in range(6))
    assert all(r.draft_cached_tokens > 0 for r in results.values()) and shared.context_cache.hits == 6


def test_stats_say_how_many_draft_tokens_came_from_the_cache():
    text, question, _ = needle_prompt(60)
    e = DraftEngine(tiny_model("llama"), specpc=CFG, context_cache_mb=64)
    first = e.generate(text, question=question, method="specpc", budget=80, max_new_tokens=2)
    again = e.generate(text, question="Which colour is the grass?", method="specpc", budget=80, max_new_tokens=2)
    assert first.stats.draft_cached_tokens == 0 < again.stats.draft_cached_tokens
    messages = [{"role": "user", "content": f"Documents:\n{text}\n\nQuestion: {question}"}]
    e.compress_messages(messages, ratio=0.3)
    messages[0]["content"] = f"Documents:\n{text}\n\nQuestion: Which colour is the grass?"
    assert e.compress_messages(messages, ratio=0.3).stats.draft_cached_tokens > 0


def test_the_adapters_size_their_engines_cache():
    pytest.importorskip("langchain_draft_rag")
    pytest.importorskip("llama_index.llms.draft_rag")
    from langchain_draft_rag import ChatDraftCompressed, DraftDocumentCompressor
    from llama_index.llms.draft_rag import DraftCompressedLLM
    from llama_index.postprocessor.draft_rag import DraftNodePostprocessor

    tiny = tiny_model("llama")
    assert ChatDraftCompressed(target=tiny, specpc=CFG).engine.context_cache.max_bytes == 1024 * 2**20
    assert not ChatDraftCompressed(target=tiny, specpc=CFG, context_cache_mb=0).engine.context_cache.enabled
    assert DraftDocumentCompressor(draft=tiny, specpc=CFG, context_cache_mb=2).engine.context_cache.max_bytes == 2**21
    assert DraftCompressedLLM(target=tiny, specpc=CFG, context_cache_mb=3).engine.context_cache.max_bytes == 3 * 2**20
    assert DraftNodePostprocessor(draft=tiny, specpc=CFG, context_cache_mb=0).engine.context_cache.max_bytes == 0
    with pytest.raises(ValueError, match="context_cache_mb"):
        ChatDraftCompressed(target=tiny, context_cache_mb=-1)


@pytest.fixture
def kept_kv(monkeypatch):
    """The KV positions each SpecKV prefill keeps, per layer (``[batch, kv_head, kept]``; None: layer kept whole)."""
    calls, real = [], speckv.compressed_prefill

    def spy(*args, **kwargs):
        prefilled, stats = real(*args, **kwargs)
        calls.append([None if t is None else t.clone() for t in stats.kept])
        return prefilled, stats

    monkeypatch.setattr(speckv, "compressed_prefill", spy)
    return calls


def same_kept(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y)) for x, y in zip(a, b)
    )


def test_speckv_lookahead_reuses_the_context_and_answers_as_a_cold_run(kept_kv):
    """Plain SpecKV drafts its lookahead over the prompt: a follow-up question, and a SpecKV call after SpecPC read
    the same context, take the context's draft KV from the cache, keep the same KV positions per layer and head and
    generate what a cold engine generates."""
    text, question, _ = needle_prompt(60)
    tiny = tiny_model("llama")
    run = dict(method="speckv", budget=24, max_new_tokens=8, lookahead_tokens=4)
    warm = DraftEngine(tiny, specpc=CFG, context_cache_mb=64)
    first = warm.generate(text, question=question, **run)
    assert first.stats.draft_cached_tokens == 0 and first.stats.lookahead_tokens == 4
    for q in QUESTIONS[1:]:
        follow = warm.generate(text, question=q, **run)
        cold = DraftEngine(tiny, specpc=CFG, context_cache_mb=64).generate(text, question=q, **run)
        assert follow.stats.draft_cached_tokens > 0.8 * follow.stats.original_tokens
        assert follow.text == cold.text and cold.stats.draft_cached_tokens == 0
        assert follow.stats.new_tokens == cold.stats.new_tokens > 1
        follow_kept, cold_kept = kept_kv[-2:]
        assert any(k is not None for k in cold_kept)  # the budget binds: positions were chosen
        assert same_kept(follow_kept, cold_kept)
    shared = DraftEngine(tiny, specpc=CFG, context_cache_mb=64)
    shared.generate(text, question=question, method="specpc", budget=80, max_new_tokens=1)
    assert shared.generate(text, question=question, **run).stats.draft_cached_tokens > 0
    off = DraftEngine(tiny, specpc=CFG, context_cache_mb=0)
    assert off.generate(text, question=question, **run).stats.draft_cached_tokens == 0
