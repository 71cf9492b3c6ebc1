"""budget="auto" compresses a prompt that fits the window only where it pays, and says why it did not."""

import pytest
from conftest import tiny_model

from draft_rag import DraftEngine, SpecPCConfig
from draft_rag.payoff import Costs, measure_costs

SMALL = SpecPCConfig(starting_layer_index=0, window_size=8, kernel_size=5, neighbor_tokens=4)
CONTEXT = " ".join(f"Record {i} says the value is {i * 37 % 101}." for i in range(60))
QUESTION = "What does record 17 say?"
CHEAP_DRAFT = Costs(draft=(0.0, 1e-6), target=(0.0, 1e-3))  # a draft 1000x cheaper per token than its target
DEAR_DRAFT = Costs(draft=(0.0, 1e-3), target=(0.0, 1e-3))  # a draft as costly as its target


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama")


def test_costs_are_measured_once_per_engine(target):
    engine = DraftEngine(target=target, specpc=SMALL)
    costs = measure_costs(engine, lengths=(16, 64), repeats=1)
    assert all(v >= 0 for v in (*costs.draft, *costs.target)) and costs.target_seconds(64) > 0
    assert costs.draft_seconds(100) == costs.draft[0] + 100 * costs.draft[1]
    engine.generate(CONTEXT, question=QUESTION, max_new_tokens=1)
    first = engine.costs
    engine.generate(CONTEXT, question=QUESTION, max_new_tokens=1)
    assert first is not None and engine.costs is first  # cached


def test_a_fitting_prompt_stays_whole_when_the_draft_costs_as_much_as_it_saves(target):
    engine = DraftEngine(target=target, specpc=SMALL, costs=DEAR_DRAFT)
    g = engine.generate(CONTEXT, question=QUESTION, max_new_tokens=2)
    assert g.stats.prompt_tokens == g.stats.original_tokens and g.stats.draft_blocks == 0
    assert g.stats.left_whole.startswith("fits the window and compressing would not pay")
    cp = engine.compress(CONTEXT, question=QUESTION, budget="auto")
    assert cp.draft_kept_tokens == cp.draft_original_tokens and "would not pay" in cp.left_whole


def test_a_fitting_prompt_is_compressed_when_a_cheap_draft_pays(target):
    engine = DraftEngine(target=target, specpc=SMALL, costs=CHEAP_DRAFT)
    g = engine.generate(CONTEXT, question=QUESTION, max_new_tokens=2)
    assert g.stats.left_whole == "" and g.stats.prompt_tokens < 0.75 * g.stats.original_tokens  # half the context
    fixed = DraftEngine(target=target, specpc=SMALL.replace(ratio=0.3), costs=CHEAP_DRAFT)
    cp = fixed.compress(CONTEXT, question=QUESTION, budget="auto")
    assert cp.left_whole == "" and cp.draft_kept_tokens < 0.5 * cp.draft_original_tokens  # the engine's own ratio
    assert QUESTION in cp.text


def test_past_the_window_is_always_compressed_to_fit(target):
    engine = DraftEngine(target=target, specpc=SMALL, costs=DEAR_DRAFT)
    cp = engine.compress(CONTEXT, question=QUESTION, budget="auto", context_window=200)
    assert cp.left_whole == "" and cp.compressed_tokens <= 200


def test_remote_targets_compress_past_min_tokens():
    draft_only = DraftEngine(draft=tiny_model("llama"), specpc=SMALL)
    cp = draft_only.compress(CONTEXT, question=QUESTION, budget="auto", context_window=100_000)
    assert cp.draft_kept_tokens == cp.draft_original_tokens
    assert "not longer than min_tokens=2048" in cp.left_whole
    eager = DraftEngine(draft=draft_only.draft, specpc=SMALL.replace(min_tokens=100))
    cp = eager.compress(CONTEXT, question=QUESTION, budget="auto", context_window=100_000)
    assert cp.left_whole == "" and cp.draft_kept_tokens < cp.draft_original_tokens
    msgs = [{"role": "user", "content": CONTEXT + "\n\n" + QUESTION}]
    whole = draft_only.compress_messages(msgs, budget="auto", context_window=100_000)
    assert "min_tokens" in whole.stats.left_whole and whole.messages == msgs
    assert eager.compress_messages(msgs, budget="auto", context_window=100_000).stats.left_whole == ""


def test_min_tokens_is_checked():
    with pytest.raises(ValueError, match="min_tokens must be an integer >= 0"):
        SpecPCConfig(min_tokens=-1)
