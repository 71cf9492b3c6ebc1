"""DraftEngine.prepare: one request's draft stage, reused for another target with the same draft (``drafted=``),
and the cost bench, which times only that path."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import tiny_model

from draft_rag import DraftEngine, SpecPCConfig
from draft_rag.bench import cost
from draft_rag.inputs import ChatInput, PromptInput

CFG = SpecPCConfig(starting_layer_index=0, window_size=8, kernel_size=5, neighbor_tokens=4)
FILLER = "Grass is green and the sky is blue. The river runs past the old mill. "
REQUEST = PromptInput(
    FILLER * 4 + "The special magic number for ocean is 4728163. " + FILLER * 4,
    instruction="Answer from the context.",
    question="What is the special magic number for ocean?",
)
CHAT = ChatInput(
    [
        {"role": "system", "content": "Answer from the context."},
        {"role": "user", "content": REQUEST.prompt},
        {"role": "user", "content": "What is the special magic number for ocean?"},
    ],
    context=[REQUEST.prompt],
)
CELLS = [
    dict(method="specpc", ratio=0.4),
    dict(method="speckv", budget=24),
    dict(method="speckv-pc", budget=24, pc_ratio=0.5),
    dict(method="snapkv", budget=24),
]


@pytest.fixture(scope="module")
def pair():
    """Two engines with different targets and one draft."""
    draft = tiny_model("llama")
    return (
        DraftEngine(tiny_model("qwen2"), draft, specpc=CFG, context_cache_mb=0),
        DraftEngine(tiny_model("llama", "eager"), draft, specpc=CFG, context_cache_mb=0),
    )


@contextlib.contextmanager
def draft_calls(engine: DraftEngine):
    """Counts the draft model's forward passes."""
    calls = []
    hook = engine.draft.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        hook.remove()


def _prefilled(engine: DraftEngine, prepared):
    state = prepared.prefill(engine.target.model, prepared.ids)
    return [(layer.keys.clone(), layer.values.clone()) for layer in state.cache.layers]


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c["method"])
@pytest.mark.parametrize("request_", [REQUEST, CHAT], ids=["prompt", "chat"])
def test_reused_draft_stage_prepares_as_a_fresh_one_without_the_draft(pair, cell, request_):
    first, second = pair
    drafted = first.prepare(request_, first.plan(max_new_tokens=4, **cell)).drafted
    plan = second.plan(max_new_tokens=4, **cell)
    fresh = second.prepare(request_, plan)
    with draft_calls(second) as calls:
        reused = second.prepare(request_, plan, drafted=drafted)
    assert calls == []
    assert reused.ids == fresh.ids
    assert (reused.compressed and reused.compressed.text) == (fresh.compressed and fresh.compressed.text)
    assert reused.stats.lookahead_tokens == fresh.stats.lookahead_tokens
    kv_fresh, kv_reused = _prefilled(second, fresh), _prefilled(second, reused)
    shorter = reused.stats.prompt_tokens < reused.stats.original_tokens
    assert shorter or reused.stats.kv_bytes < reused.stats.kv_bytes_full  # the cell did compress
    assert reused.stats.kv_bytes == fresh.stats.kv_bytes and reused.stats.kv_entries == fresh.stats.kv_entries
    for (k1, v1), (k2, v2) in zip(kv_fresh, kv_reused, strict=True):
        torch.testing.assert_close(k1, k2)
        torch.testing.assert_close(v1, v2)
    if cell["method"] == "speckv":
        assert reused.drafted.lookahead and reused.drafted.lookahead == drafted.lookahead


def test_drafted_from_another_method_or_draft_is_refused(pair):
    first, second = pair
    drafted = first.prepare(REQUEST, first.plan(method="specpc", ratio=0.4)).drafted
    with pytest.raises(ValueError, match="'specpc'.*'speckv'"):
        second.prepare(REQUEST, second.plan(method="speckv", budget=24), drafted=drafted)
    other = DraftEngine(tiny_model("qwen2"), tiny_model("qwen2"), specpc=CFG)
    with pytest.raises(ValueError, match="another draft model"):
        other.prepare(REQUEST, other.plan(method="specpc", ratio=0.4), drafted=drafted)
    with pytest.raises(TypeError, match="drafted must be"):
        second.prepare(REQUEST, second.plan(method="specpc", ratio=0.4), drafted=drafted.shortened)


def test_plan_takes_options_and_keywords(pair):
    engine = pair[0]
    assert engine.plan().method.name == engine.method
    assert engine.plan(method="speckv", budget=24).budget.tokens == 24
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        engine.plan(ratios=0.5)


@pytest.fixture
def tiny_shape(monkeypatch):
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rope_theta=10000.0, tie_word_embeddings=True)  # fmt: skip
    monkeypatch.setitem(cost.SHAPES, "tiny", shape)


@pytest.mark.parametrize("method", ["full", "specpc", "speckv", "speckv-pc"])
def test_cost_cells_time_what_generate_runs(tiny_shape, method):
    """A cost cell's target prompt and kept KV are those of ``generate`` with the same options, and its target
    stage runs no draft forward (the draft stage ran once, in the reader)."""
    draft = tiny_model("llama")
    target = cost.build_target("tiny", draft)
    request, budget = cost.prompt(draft.tokenizer, 300), cost.BudgetLevel(0.5, 32)
    reader, by_shape = cost.engines(draft, {"tiny": target}, CFG)
    stages = cost.draft_stages(reader, request, [budget], 3, [method])
    with draft_calls(reader) as calls:
        row = cost.target_run(by_shape["tiny"], request, method, budget, stages, 3)
    assert calls == []
    user = DraftEngine(target, draft, specpc=CFG, context_cache_mb=0)
    gen = user.generate(request, options=cost.options(method, budget, 3))
    assert row["target_tokens"] == gen.stats.prompt_tokens
    assert row["kv_bytes"] == gen.stats.kv_bytes
