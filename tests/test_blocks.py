"""Long prompts: block scoring past the draft's window, and the context-window checks for draft and target."""

from __future__ import annotations

import asyncio
import functools
import itertools

import numpy as np
import pytest
import torch

from draft_rag import DraftEngine, SpecPCConfig
from draft_rag import blocks as blocks_mod
from draft_rag.blocks import block_size_for, score_blocks, split
from draft_rag.config import ASSUMED_WINDOW
from draft_rag.corpus import stdlib_documents
from draft_rag.models import LoadedModel, context_window
from draft_rag.prompt import build_segments, tokenize, wrap
from draft_rag.scoring import draft_scores
from tests.conftest import tiny_config, tiny_tokenizer

WINDOW = 256
CFG = SpecPCConfig(starting_layer_index=0, window_size=16, kernel_size=8, neighbor_tokens=8, granularity="token")
QUESTION = "What is the special magic number for ocean?"


@functools.cache
def short_window_model(arch: str = "llama") -> LoadedModel:
    """A tiny random model that accepts only ``WINDOW`` positions."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        tiny_config(arch, max_position_embeddings=WINDOW), attn_implementation="sdpa", dtype=torch.float32
    ).eval()
    return LoadedModel(model, tiny_tokenizer(), f"tiny-{arch}-window{WINDOW}")


@functools.cache
def real_text() -> str:
    """Real text (pydoc of ``bisect``), about 2.5 times the tiny window in the tiny tokenizer."""
    text = stdlib_documents(("bisect",))[0].text
    ids = tiny_tokenizer()(text, add_special_tokens=False, return_offsets_mapping=True)
    return text[: ids["offset_mapping"][int(2.5 * WINDOW)][0]]


def counting(calls: list):
    def score(model, ids, cfg, eos=None, **cache):
        assert len(ids) + cfg.lookahead_tokens <= WINDOW, "a draft pass ran past the window"
        calls.append(list(ids))
        return draft_scores(model, ids, cfg, eos, **cache)

    return score


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_prompt_past_the_window_is_scored_in_blocks(arch, monkeypatch):
    calls: list = []
    monkeypatch.setattr("draft_rag.specpc.draft_scores", counting(calls))
    engine = DraftEngine(draft=short_window_model(arch), specpc=CFG)
    assert engine.draft_window == WINDOW and engine.block_size == WINDOW
    cp = engine.compress(real_text(), question=QUESTION, budget=120)
    assert cp.draft_original_tokens > 2 * WINDOW and cp.draft_blocks == len(calls) >= 3
    assert cp.draft_kept_tokens == 120 and QUESTION in cp.text and cp.text.endswith(QUESTION)
    assert cp.lookahead_ids == []  # no lookahead from a fragment
    scores = np.array([s for _, _, s in cp.token_scores])
    assert np.isfinite(scores).all()
    # every block was scored: each draft-token stretch of context has non-zero scores
    assert all(
        any(s > 0 for a, b, s in cp.token_scores if lo <= a < hi)
        for lo, hi in _char_blocks(cp.original_text, len(calls))
    )
    assert all(call[-12:] == calls[0][-12:] for call in calls)  # every pass ends with the question


def _char_blocks(text: str, k: int):
    n = len(text)
    return [(n * i // k, n * (i + 1) // k) for i in range(k)]


def test_block_scores_are_those_of_a_pass_over_head_block_and_tail():
    lm = short_window_model()
    segments, _ = build_segments(real_text(), instruction="Answer from the text.", question=QUESTION)
    layout = wrap(segments, lm.tokenizer)
    tok = tokenize(lm.tokenizer, layout)
    is_ctx = [layout[g].role == "context" for g in tok.segment]
    dp, k = score_blocks(lm.model, tok.ids, is_ctx, CFG, size=WINDOW)
    head = is_ctx.index(True)
    tail = len(is_ctx) - 1 - max(i for i, c in enumerate(is_ctx) if c)
    parts = split(len(tok.ids), head, tail, WINDOW)
    assert k == len(parts) and parts[0][0] == head and parts[-1][1] == len(tok.ids) - tail
    assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1  # comparable blocks
    lo, hi = parts[1]
    one = draft_scores(
        lm.model, tok.ids[:head] + tok.ids[lo:hi] + tok.ids[len(tok.ids) - tail :], CFG.replace(lookahead_tokens=0)
    ).scores
    torch.testing.assert_close(dp.scores[lo:hi], one[head : head + hi - lo])
    assert (dp.scores[lo:hi] > 0).all()


def test_a_prompt_within_one_block_is_one_plain_pass():
    lm = short_window_model()
    tok = tokenize(lm.tokenizer, wrap(build_segments("Some short text.", question=QUESTION)[0], lm.tokenizer))
    dp, k = score_blocks(lm.model, tok.ids, [True] * len(tok.ids), CFG, size=WINDOW)
    assert k == 1
    torch.testing.assert_close(dp.scores, draft_scores(lm.model, tok.ids, CFG).scores)


def test_split_covers_the_context_in_near_equal_blocks_that_fit():
    parts = split(1000, 30, 50, 256)
    assert parts[0][0] == 30 and parts[-1][1] == 950
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
    assert all(30 + (hi - lo) + 50 <= 256 for lo, hi in parts) and len(parts) == 6
    with pytest.raises(ValueError, match="question"):
        split(1000, 100, 120, 256)


def test_questions_up_to_an_eighth_of_a_pass_cut_the_context_alike():
    head, context = 51, 3872  # a RULER niah_multiquery prompt at 4k: its joint question, then one key alone
    cuts = {tuple(split(head + context + tail, head, tail, 2048)) for tail in range(1, 2048 // 8 + 1)}
    assert len(cuts) == 1 and len(cuts.pop()) == 3  # so every follow-up finds each block in the context cache
    later = {tuple(split(head + context + tail, head, tail, 2048)) for tail in range(513, 769)}
    assert len(later) == 1 and all(head + hi - lo + 768 <= 2048 for lo, hi in later.pop())  # a longer tail: 256-steps
    long_head = split(1000, 170, 10, 256)  # 170 + 32 would leave less than 64 for context: no allowance then
    assert all(170 + (hi - lo) + 10 <= 256 and hi - lo >= 64 for lo, hi in long_head)


def test_block_size_checks():
    lm = short_window_model()
    assert context_window(lm.model) == WINDOW and block_size_for(lm.model) == WINDOW
    assert block_size_for(lm.model, 200) == 200
    with pytest.raises(ValueError, match="window of 256"):
        block_size_for(lm.model, 512)
    with pytest.raises(ValueError, match="block_size"):
        DraftEngine(draft=lm, block_size=10)


def test_score_chunks_past_the_window(monkeypatch):
    calls: list = []
    monkeypatch.setattr(blocks_mod, "draft_scores", counting(calls))
    engine = DraftEngine(draft=short_window_model(), specpc=CFG)
    text = real_text()
    chunks = [text[i : i + 300] for i in range(0, len(text), 300)]
    scores = engine.score_chunks(chunks, question=QUESTION)
    assert len(calls) >= 3 and len(scores) == len(chunks) and all(np.isfinite(scores)) and min(scores) > 0


def test_threads_are_checked_and_set():
    before = torch.get_num_threads()
    try:
        DraftEngine(draft=short_window_model(), threads=1)
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads"):
            DraftEngine(draft=short_window_model(), threads=0)
    finally:
        torch.set_num_threads(before)


# -- the target's window ----------------------------------------------------------------------------
def _forbid_forward(monkeypatch, lm):
    def boom(*a, **k):
        raise AssertionError("the model ran")

    monkeypatch.setattr(lm.model, "forward", boom)


@pytest.mark.parametrize("method", ["full", "speckv", "snapkv"])
def test_generate_past_the_targets_window_is_refused_before_running(method, monkeypatch):
    lm = short_window_model()
    engine = DraftEngine(lm, specpc=CFG)
    _forbid_forward(monkeypatch, lm)
    with pytest.raises(ValueError, match=r"context window is 256 tokens.*max_new_tokens=8"):
        engine.generate(real_text(), question=QUESTION, method=method, budget=64, max_new_tokens=8)
    with pytest.raises(ValueError, match="context window"):  # max_new_tokens alone can overflow it
        engine.generate("Short.", method="full", max_new_tokens=WINDOW)


def test_specpc_without_budget_fits_the_targets_window():
    lm = short_window_model()
    engine = DraftEngine(lm, specpc=CFG)
    for budget in (None, "auto"):
        g = engine.generate(real_text(), question=QUESTION, method="specpc", budget=budget, max_new_tokens=16)
        assert g.stats.original_tokens > 2 * WINDOW
        assert g.stats.prompt_tokens + 16 <= WINDOW and g.stats.prompt_tokens > WINDOW // 2
        assert g.stats.draft_blocks == g.compressed.draft_blocks >= 3 and QUESTION in g.compressed.text


def test_budget_auto_checks():
    engine = DraftEngine(short_window_model(), specpc=CFG)
    with pytest.raises(ValueError, match="specpc"):
        engine.generate("Short.", method="speckv", budget="auto", max_new_tokens=4)
    with pytest.raises(ValueError, match="ratio"):
        engine.compress("Short.", budget="auto", ratio=0.5)
    cp = engine.compress(real_text(), question=QUESTION, budget="auto", context_window=128)
    assert cp.compressed_tokens < 128 and QUESTION in cp.text
    with pytest.raises(ValueError, match="context_window"):
        DraftEngine(draft=short_window_model(), specpc=CFG).compress("Short.", budget="auto")


def test_plain_speckv_refuses_a_prompt_past_the_drafts_window():
    draft = short_window_model()
    target = short_window_model("qwen2")
    big = LoadedModel(target.model, target.tokenizer, "tiny")
    big.model.config.max_position_embeddings = 4096
    try:
        engine = DraftEngine(big, draft, specpc=CFG)
        with pytest.raises(ValueError, match="draft.*context window of 256.*speckv-pc"):
            engine.generate(real_text(), question=QUESTION, method="speckv", budget=64, max_new_tokens=4)
    finally:
        big.model.config.max_position_embeddings = WINDOW


def test_speckv_holds_one_full_layer_at_a_time_at_16k(monkeypatch):
    """At a 16k-token prompt, when layer i is scored, layers < i already hold only the budget and layers > i
    nothing: the full KV of one layer at most, whatever the prompt length."""
    from transformers import AutoModelForCausalLM, DynamicCache

    from draft_rag import speckv
    from draft_rag.config import SpecKVConfig
    from draft_rag.methods import REGISTRY

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        tiny_config("llama", max_position_embeddings=32768, num_hidden_layers=4),
        attn_implementation="sdpa",
        dtype=torch.float32,
    ).eval()
    caches, totals = [], []

    class Recording(DynamicCache):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            caches.append(self)

    def entries(layer):
        keys = getattr(layer, "keys", None)
        return 0 if keys is None or keys.dim() < 3 else keys.shape[-2]

    base = REGISTRY["speckv"].make_scorer(SpecKVConfig())

    def recording_scorer(*args, **kwargs):
        totals.append(sum(entries(layer) for layer in caches[-1].layers))
        return base(*args, **kwargs)

    monkeypatch.setattr(speckv, "DynamicCache", Recording)
    n, look, budget = 16384, 8, 256
    ids = torch.randint(10, 300, (n,)).tolist()
    _, kv = speckv.compressed_prefill(
        model, ids, list(range(10, 10 + look)), budget, recording_scorer, window=32, horizon=look
    )
    assert len(totals) == 4 and kv.entries == [budget + 1] * 4  # + the last prompt token, fed again
    assert totals == [(n + look) + i * budget for i in range(4)]  # one full layer + the compressed ones


# -- adapters: budget="auto" and the wrapped model's window -------------------------------------------
def _draft_tokens(text: str) -> int:
    return len(tiny_tokenizer()(text, add_special_tokens=False)["input_ids"])


def test_langchain_wrapped_chat_model_fits_its_window():
    from langchain_core.messages import HumanMessage

    from langchain_draft_rag import ChatDraftCompressed
    from tests.test_langchain_chat import Recorder

    msgs = [HumanMessage("Context:\n" + real_text() * 3), HumanMessage(QUESTION)]  # labelled: all of it context
    for kwargs in ({"context_window": 150}, {"budget": "auto", "context_window": 150}):
        rec = Recorder()
        ChatDraftCompressed(llm=rec, draft=short_window_model(), specpc=CFG, **kwargs).invoke(msgs)
        sent = rec.calls[-1]["messages"]
        assert sent[-1].text == QUESTION and _draft_tokens("".join(m.text for m in sent)) < 150
    rec = Recorder(profile={"max_input_tokens": 200})
    ChatDraftCompressed(llm=rec, draft=short_window_model(), specpc=CFG).invoke(msgs)
    assert 100 < _draft_tokens("".join(m.text for m in rec.calls[-1]["messages"])) < 200
    for budget in (None, "auto"):  # an unknown window: ASSUMED_WINDOW, said in the stats (the warning: test_budgets)
        rec = Recorder()
        out = ChatDraftCompressed(llm=rec, draft=short_window_model(), specpc=CFG, budget=budget).invoke(msgs)
        stats, sent = out.response_metadata["draft_rag"], rec.calls[-1]["messages"]
        assert stats["context_window"] == ASSUMED_WINDOW and "ASSUMED_WINDOW" in stats["budget_reason"]
        assert [m.text for m in sent] == [m.text for m in msgs]  # it fits 32k tokens: sent whole
        assert "min_tokens" in stats["left_whole"]


def test_langchain_local_target_accepts_budget_auto():
    from langchain_core.messages import HumanMessage

    from langchain_draft_rag import ChatDraftCompressed

    chat = ChatDraftCompressed(target=short_window_model(), specpc=CFG, budget="auto", max_tokens=8)
    out = chat.invoke([HumanMessage("Context:\n" + real_text() * 3), HumanMessage(QUESTION)])
    stats = out.response_metadata["draft_rag"]
    assert stats["original_tokens"] > WINDOW and stats["prompt_tokens"] + 8 <= WINDOW


def test_llamaindex_wrapped_llm_fits_its_window():
    from llama_index.core.llms import ChatMessage, MockLLM

    from llama_index.llms.draft_rag import DraftCompressedLLM

    for budget in (None, "auto"):
        llm = DraftCompressedLLM(
            llm=MockLLM(), draft=short_window_model(), specpc=CFG, budget=budget, context_window=150
        )
        reply = llm.complete(real_text())
        assert 100 < _draft_tokens(reply.text) <= 150  # MockLLM echoes its prompt
        messages = [ChatMessage(role="user", content="Context:\n" + real_text() * 2 + "\n\nQuestion: " + QUESTION)]
        replies = [llm.chat(messages), list(llm.stream_chat(messages))[-1], asyncio.run(llm.achat(messages))]
        for chat in replies:  # the chat paths fit the same window as complete (not the engine's 1024 default)
            assert 100 < _draft_tokens(chat.message.content) <= 150 and QUESTION in chat.message.content
            assert chat.additional_kwargs["draft_rag"]["context_window"] == 150
        assert reply.additional_kwargs["draft_rag"]["context_window"] == 150
    with pytest.raises(ValueError, match="auto"):
        DraftCompressedLLM(llm=MockLLM(), draft=short_window_model(), budget="auto", ratio=0.5)


def test_cli_parses_threads_budget_auto_and_block_size():
    from draft_rag.cli import build_parser

    args = build_parser().parse_args(
        ["--threads", "1", "compress", "f.txt", "--budget", "auto", "--context-window", "4000", "--block-size", "1024"]
    )
    assert (args.threads, args.budget, args.context_window, args.block_size) == (1, "auto", 4000, 1024)
    args = build_parser().parse_args(["generate", "f.txt", "--threads", "2"])
    assert args.threads == 2 and args.budget is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["compress", "f.txt", "--budget", "lots"])
