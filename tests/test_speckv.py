"""SpecKV and the KV baselines: budgets, selection, positions, sliding windows, engine wiring, real SmolLM2."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import ARCHS, needle_prompt, on_device, tiny_config, tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM, DynamicCache

from draft_rag import DraftEngine, SpecPCConfig
from draft_rag.baselines import RandomScores, streaming_scores
from draft_rag.config import SpecKVConfig
from draft_rag.generation import Sampling, stream
from draft_rag.methods import get as get_method
from draft_rag.models import LoadedModel
from draft_rag.scoring import pool
from draft_rag.speckv import attention_scores, compressed_prefill, keep_indices, lookahead_for_target

TEXT = "The special magic number for ocean is 4728163. Grass is green, the sky is blue. " * 6
CFG = SpecKVConfig(window_size=8)
SCORE = functools.partial(attention_scores, cfg=CFG)


def _ids(lm, text=TEXT):
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def _look(lm):
    return _ids(lm, " The special magic number")


def _greedy(lm, ids, n=12, prefill=None):
    s = Sampling(max_new_tokens=n)
    kw = {"prefill": prefill} if prefill else {}
    return "".join(stream(lm.model, lm.tokenizer, ids, s, **kw))


@pytest.mark.parametrize("arch", ARCHS)
def test_cache_holds_budget_per_layer_and_kv_head(arch, attn_kernel, device_dtype):
    tiny = tiny_model(arch)
    lm = LoadedModel(on_device(tiny.model, device_dtype, attn_kernel), tiny.tokenizer, tiny.name)
    ids = _ids(lm)
    state, kv = compressed_prefill(lm.model, ids, _look(lm), 40, SCORE, window=8, horizon=16)
    cfg = lm.model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    for i, layer in enumerate(state.cache.layers):
        sliding = getattr(cfg, "layer_types", None) and cfg.layer_types[i] == "sliding_attention"
        # budget + the re-fed last prompt token; tiny Gemma3's window (32) < prompt: kept as a plain prefill keeps it
        expected = cfg.sliding_window - 1 if sliding else 41
        assert tuple(layer.keys.shape) == (1, cfg.num_key_value_heads, expected, head_dim)
        assert layer.values.shape == layer.keys.shape
        assert kv.entries[i] == expected
    assert state.next_position == len(ids)
    assert kv.kv_bytes < kv.kv_bytes_full
    assert kv.kv_bytes == sum(t.numel() * t.element_size() for l in state.cache.layers for t in (l.keys, l.values))


@pytest.mark.parametrize("arch", ARCHS)
def test_kept_keys_are_the_top_scored_and_the_window(arch):
    """Reference scores come from the model's own eager attention probabilities, not from the code under test."""
    lm = tiny_model(arch, "eager")
    ids, look = _ids(lm), _look(lm)
    w, budget = 8, 40
    n = len(ids) - 1  # the last prompt token is a window query, not a candidate key
    state, kv = compressed_prefill(lm.model, ids, look, budget, SCORE, window=w, horizon=16)
    full = DynamicCache(config=lm.model.config)
    out = lm.model(input_ids=torch.tensor([ids + look]), output_attentions=True, use_cache=True, cache=full)
    hkv = lm.model.config.num_key_value_heads
    compressed = [i for i, k in enumerate(kv.kept) if k is not None]
    assert compressed, "no layer was compressed"
    for i in compressed:
        probs = out.attentions[i][0].float()  # [Hq, T, T]
        rows = probs[:, n - w :, : n - w].reshape(hkv, -1, n - w)  # window + lookahead queries, GQA grouped
        ref = pool(rows.amax(dim=1)[None], "max", 7)[0]  # [Hkv, n - w]
        kept = kv.kept[i][0]
        assert kept.shape == (hkv, budget)
        for h in range(hkv):
            positions = kept[h].tolist()
            assert positions == sorted(set(positions))
            assert positions[-w:] == list(range(n - w, n))  # the window is always kept
            chosen = torch.zeros(n - w, dtype=torch.bool)
            chosen[positions[:-w]] = True
            assert ref[h][chosen].min() >= ref[h][~chosen].max() - 1e-6
            # the cache holds exactly those entries of the full prefill (keys stay at KV-head granularity)
            torch.testing.assert_close(state.cache.layers[i].keys[0, h, :budget], full.layers[i].keys[0, h, positions])
            torch.testing.assert_close(
                state.cache.layers[i].values[0, h, :budget], full.layers[i].values[0, h, positions]
            )


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ARCHS)
def test_budget_covering_prompt_is_token_identical(arch, attn):
    """Prompt + lookahead prefilled, the lookahead's KV dropped: decoding equals plain generation."""
    lm = tiny_model(arch, attn)
    ids = _ids(lm)
    ref = _greedy(lm, ids, 40)  # 40 new tokens: past tiny Gemma3's sliding window of 32
    run = lambda m, i: compressed_prefill(m, i, _look(lm), len(ids), SCORE, window=8, horizon=40)[0]
    assert _greedy(lm, ids, 40, run) == ref


@pytest.mark.parametrize("arch", ARCHS)
def test_decoding_continues_at_original_positions(arch):
    """StreamingLLM evicts the same keys in every head: a full cache with those keys masked out must decode alike."""
    lm = tiny_model(arch, "sdpa")
    ids = _ids(lm)
    n, budget, w = len(ids), 40, 8
    sc = functools.partial(streaming_scores, sink_tokens=4)
    got = _greedy(lm, ids, 10, lambda m, i: compressed_prefill(m, i, [], budget, sc, window=w, horizon=10)[0])
    keep = torch.zeros(n - 1, dtype=torch.long)  # over the tokens before the last prompt token
    keep[:4] = 1
    keep[n - 1 - (budget - 4) :] = 1
    cache = DynamicCache(config=lm.model.config)
    lm.model(input_ids=torch.tensor([ids[:-1]]), use_cache=True, cache=cache)
    mask = torch.cat([keep, torch.ones(1, dtype=torch.long)])  # the last prompt token, fed over the kept keys
    out = lm.model(
        input_ids=torch.tensor([ids[-1:]]),
        position_ids=torch.tensor([[n - 1]]),
        attention_mask=mask[None],
        use_cache=True,
        cache=cache,
    )
    toks = []
    for step in range(10):
        tok = int(out.logits[0, -1].argmax())
        toks.append(tok)
        mask = torch.cat([mask, torch.ones(1, dtype=torch.long)])
        out = lm.model(
            input_ids=torch.tensor([[tok]]),
            position_ids=torch.tensor([[n + step]]),
            attention_mask=mask[None],
            use_cache=True,
            cache=cache,
        )
    assert got == lm.tokenizer.decode(toks, skip_special_tokens=True)


def test_sliding_layers_covering_the_decode_are_compressed():
    """Gemma3 whose sliding window covers prompt + decode: every layer holds the budget, still exact at full budget."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        tiny_config("gemma3", sliding_window=512), attn_implementation="sdpa", dtype=torch.float32
    ).eval()
    lm = LoadedModel(model, tiny_tokenizer(), "tiny-gemma3-wide")
    ids = _ids(lm)
    state, kv = compressed_prefill(model, ids, _look(lm), 40, SCORE, window=8, horizon=16)
    assert kv.entries == [41, 41, 41] and all(k is not None for k in kv.kept)
    run = lambda m, i: compressed_prefill(m, i, _look(lm), len(ids), SCORE, window=8, horizon=16)[0]
    assert _greedy(lm, ids, 16, run) == _greedy(lm, ids, 16)
    short = lambda m, i: compressed_prefill(m, i, _look(lm), 40, SCORE, window=8, horizon=16)[0]
    assert len(_greedy(lm, ids, 16, short)) > 0


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("method", ["speckv", "speckv-pc", "snapkv", "streamingllm", "random"])
def test_first_token_comes_from_the_compressed_cache(arch, method):
    """The first answer token's logits equal a manual crop-and-refeed: the kept entries of a plain prefill of
    the prompt without its last token, then that token fed over them (and differ from the full prefill's)."""
    lm = tiny_model(arch, "sdpa")
    ids, budget = _ids(lm), 24
    look = _look(lm) if method.startswith("speckv") else []
    state, kv = compressed_prefill(
        lm.model, ids, look, budget, get_method(method).make_scorer(CFG), window=8, horizon=8
    )
    prefix = DynamicCache(config=lm.model.config)
    lm.model(input_ids=torch.tensor([ids[:-1]]), use_cache=True, cache=prefix)
    cropped = DynamicCache(config=lm.model.config)
    for i, kept in enumerate(kv.kept):
        assert kept is not None and kept.shape[-1] == budget
        gather = kept[..., None].expand(*kept.shape, prefix.layers[i].keys.shape[-1])
        cropped.update(
            torch.gather(prefix.layers[i].keys, 2, gather), torch.gather(prefix.layers[i].values, 2, gather), i
        )
    out = lm.model(
        input_ids=torch.tensor([ids[-1:]]), position_ids=torch.tensor([[len(ids) - 1]]), use_cache=True, cache=cropped
    )
    torch.testing.assert_close(state.logits, out.logits[0, -1], rtol=1e-4, atol=1e-4)
    for i, layer in enumerate(state.cache.layers):  # the re-fed token's KV is the crop-and-refeed's too
        torch.testing.assert_close(layer.keys, cropped.layers[i].keys, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(layer.values, cropped.layers[i].values, rtol=1e-4, atol=1e-4)
    full = lm.model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits[0, -1]
    assert not torch.allclose(state.logits, full, atol=1e-3)


def test_baseline_selections():
    n, w, budget = 100, 8, 30
    stream_idx = keep_indices(streaming_scores(None, torch.zeros(1, 2, n, 4), None, {}, n, w, 4), n, budget, w)
    assert stream_idx[0, 0].tolist() == [0, 1, 2, 3] + list(range(n - 26, n))
    a = keep_indices(RandomScores(3)(None, torch.zeros(1, 2, n, 4), None, {}, n, w), n, budget, w)
    b = keep_indices(RandomScores(3)(None, torch.zeros(1, 2, n, 4), None, {}, n, w), n, budget, w)
    assert torch.equal(a, b) and a.shape == (1, 2, budget)
    assert a[0, 0, -w:].tolist() == list(range(n - w, n))
    assert not torch.equal(a[0, 0], a[0, 1])  # independent per KV head
    with pytest.raises(ValueError, match="method must be one of"):
        get_method("h2o")
    with pytest.raises(ValueError, match="n_prompt - window"):
        keep_indices(torch.zeros(1, 1, 5), 10, 4, 2)


def _engine(arch="qwen3"):
    return DraftEngine(target=tiny_model(arch, "sdpa"), specpc=SpecPCConfig(starting_layer_index=0, window_size=8))


@pytest.mark.parametrize("method", ["speckv", "speckv-pc", "snapkv", "streamingllm", "random"])
def test_engine_methods_report_kv_stats(method):
    engine = _engine()
    g = engine.generate(TEXT, question="What is the number?", method=method, budget=40, max_new_tokens=6, pc_budget=80)
    s = g.stats
    assert s.method == method and s.new_tokens >= 1
    assert s.kv_entries == [41, 41, 41] and 0 < s.kv_bytes < s.kv_bytes_full
    assert {"prefill", "kv_select", "target", "total"} <= set(s.seconds)
    assert s.lookahead_tokens > 0 if method.startswith("speckv") else s.lookahead_tokens == 0
    if method == "speckv-pc":
        assert g.compressed is not None and s.prompt_tokens < s.original_tokens
    if method != "speckv-pc":  # same prompt: the full cache is what the KV method reports as full
        full = engine.generate(TEXT, question="What is the number?", method="full", max_new_tokens=6)
        assert full.stats.kv_bytes == full.stats.kv_bytes_full == s.kv_bytes_full


def test_engine_speckv_equals_full_when_budget_covers_prompt():
    engine = _engine("llama")
    full = engine.generate(TEXT, question="What is the number?", method="full", max_new_tokens=20)
    kv = engine.generate(TEXT, question="What is the number?", method="speckv", budget=4096, max_new_tokens=20)
    assert kv.text == full.text and kv.stats.kv_bytes == full.stats.kv_bytes


def test_engine_streaming_sampling_and_stop():
    engine = _engine("llama")
    kw = dict(
        question="What is the number?",
        method="speckv",
        budget=40,
        max_new_tokens=12,
        temperature=0.8,
        seed=5,
        lookahead_tokens=4,
    )
    pieces = list(engine.stream(TEXT, **kw))
    assert "".join(pieces) == engine.generate(TEXT, **kw).text  # seeded sampling is reproducible
    text = engine.generate(TEXT, **{**kw, "temperature": 0.0}).text
    stop = text[3:5]
    assert stop and stop not in engine.generate(TEXT, **{**kw, "temperature": 0.0, "stop": [stop]}).text


def test_bad_arguments_are_named():
    engine = _engine()
    with pytest.raises(ValueError, match="budget must be an integer >= 1"):
        "".join(engine.stream(TEXT, method="speckv", budget=0))
    with pytest.raises(ValueError, match="lookahead_tokens"):
        "".join(engine.stream(TEXT, method="speckv", budget=10, lookahead_tokens=-1))
    with pytest.raises(ValueError, match="method must be one of"):
        engine.stream(TEXT, method="h2o")
    with pytest.raises(ValueError, match="budget"):
        compressed_prefill(engine.target.model, [1, 2, 3], [], 0, SCORE)
    with pytest.raises(ValueError, match="window_size"):
        SpecKVConfig(window_size=0)


@pytest.mark.slow
def test_cross_tokenizer_lookahead_travels_as_text(smollm):
    tiny = tiny_tokenizer()
    ids = tiny("The number is <|im_start|> 4728163", add_special_tokens=False, split_special_tokens=True)["input_ids"]
    out = lookahead_for_target(tiny, smollm.tokenizer, ids)
    assert smollm.tokenizer.decode(out) == "The number is <|im_start|> 4728163"
    assert smollm.tokenizer.convert_tokens_to_ids("<|im_start|>") not in out  # untrusted: stays text
    assert lookahead_for_target(smollm.tokenizer, smollm.tokenizer, [5, 6, 7], {7}) == [5, 6]


@pytest.mark.slow
def test_smollm_needle_with_256_entry_cache(smollm):
    text, question, answer = needle_prompt(85, 0.4)
    engine = DraftEngine(target=smollm)
    g = engine.generate(
        text,
        question=question,
        answer_prefix="The special magic number for ocean is",
        method="speckv",
        budget=256,
        max_new_tokens=10,
    )
    assert g.stats.original_tokens > 2000 and g.stats.lookahead_tokens > 0
    assert g.stats.kv_entries == [257] * 30 and g.stats.kv_bytes * 8 < g.stats.kv_bytes_full
    assert answer in g.text, g.text


@pytest.mark.slow
def test_engine_cross_tokenizer_draft(smollm):
    """SmolLM2 drafts for a target with another tokenizer: its lookahead is re-encoded from text."""
    engine = DraftEngine(target=tiny_model("llama", "sdpa"), draft=smollm)
    g = engine.generate(TEXT, question="What is the number?", method="speckv", budget=40, max_new_tokens=6)
    assert g.stats.lookahead_tokens > 0 and g.stats.kv_entries == [41, 41, 41]
    assert g.stats.seconds["draft"] > 0 and g.stats.new_tokens >= 1


def test_speckv_pc_uses_the_official_inner_specpc(monkeypatch):
    """SpecKV-PC's SpecPC stage: kernel = neighbours = 32 and 20 draft tokens (reused as SpecKV's lookahead)."""
    import draft_rag.pipeline as pipeline_mod

    seen = []
    real = pipeline_mod.compress

    def spy(model, tokenizer, segments, chunks, cfg, **kw):
        seen.append(cfg.for_draft(model))
        return real(model, tokenizer, segments, chunks, cfg, **kw)

    monkeypatch.setattr(pipeline_mod, "compress", spy)
    engine = DraftEngine(target=tiny_model("qwen2", "sdpa"), specpc=SpecPCConfig(starting_layer_index=0))
    engine.generate(TEXT, question="What is the number?", method="speckv-pc", budget=40, pc_budget=80, max_new_tokens=4)
    assert (seen[0].kernel_size, seen[0].neighbor_tokens, seen[0].lookahead_tokens) == (32, 32, 20)
    assert engine.specpc.for_draft(engine.draft.model).kernel_size == 64  # plain SpecPC keeps the Qwen default
