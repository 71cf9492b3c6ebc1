"""Vertical-slash sparse prefill: the pattern it computes, exactness with every column, and the engine paths."""

import dataclasses

import pytest
import torch
from conftest import on_device, tiny_model

from draft_rag import DraftEngine, SparsePrefillConfig, SpecPCConfig
from draft_rag.sparse_prefill import SparseStats, VerticalSlash, sparse_prefill, vertical_slash


def reference(query, key, value, scores, cfg: SparsePrefillConfig, scale: float) -> torch.Tensor:
    """Dense attention under the vertical-slash mask written out query by query (small N only)."""
    _, hq, n, _ = query.shape
    hkv = key.shape[1]
    allowed = torch.zeros(hkv, n, n, dtype=torch.bool)
    for i in range(n):
        start = i // cfg.query_block * cfg.query_block
        near = max(0, start - cfg.prefill_window_size)
        allowed[:, i, near : i + 1] = True
        far = min(cfg.prefill_vertical_size, near)
        if far:
            for h in range(hkv):
                allowed[h, i, scores[0, h, :near].topk(far).indices] = True
    mask = allowed.repeat_interleave(hq // hkv, dim=0)[None]
    k = key.repeat_interleave(hq // hkv, dim=1)
    v = value.repeat_interleave(hq // hkv, dim=1)
    logits = (query @ k.transpose(-1, -2) * scale).masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, dim=-1) @ v


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_blocks_compute_the_vertical_slash_pattern(heads, kv_heads):
    torch.manual_seed(0)
    n, d = 90, 8
    q, k, v = torch.randn(1, heads, n, d), torch.randn(1, kv_heads, n, d), torch.randn(1, kv_heads, n, d)
    scores = torch.rand(1, kv_heads, n)
    cfg = SparsePrefillConfig(prefill_vertical_size=7, prefill_window_size=12, query_block=16, min_tokens=0)
    out, widest = vertical_slash(q, k, v, scores, cfg, 0.3)
    assert torch.allclose(out, reference(q, k, v, scores, cfg, 0.3), atol=1e-5)
    assert widest == 7 + 12 + 16  # no query block reads more keys than vertical + band + itself


def varlen_stand_in(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=None, causal=False):
    """flash-attn's ``flash_attn_varlen_func`` contract on CPU (the real kernel needs CUDA; scripts/gpu_check.py
    runs it): packed ``[total, H, D]`` sequences cut at ``cu_q``/``cu_k``, GQA by head groups, causal masks
    aligned to the end of each sequence's keys."""
    assert cu_q.dtype == cu_k.dtype == torch.int32 and causal and softmax_scale
    assert max_q == int((cu_q[1:] - cu_q[:-1]).max()) and max_k == int((cu_k[1:] - cu_k[:-1]).max())
    out, seq = [], lambda t, a, b: t[a:b].transpose(0, 1)[None]  # noqa: E731  [L, H, D] -> [1, H, L, D]
    for qa, qb, ka, kb in zip(cu_q[:-1], cu_q[1:], cu_k[:-1], cu_k[1:]):
        mask = torch.ones(int(qb - qa), int(kb - ka), dtype=torch.bool).tril_(int(kb - ka) - int(qb - qa))
        o = torch.nn.functional.scaled_dot_product_attention(
            seq(q, qa, qb), seq(k, ka, kb), seq(v, ka, kb), attn_mask=mask, scale=softmax_scale, enable_gqa=True
        )
        out.append(o[0].transpose(0, 1))
    return torch.cat(out)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2)])
def test_flash_attn_varlen_path_packs_every_block_in_one_call(monkeypatch, heads, kv_heads):
    from draft_rag import sparse_prefill as sp

    calls = []
    monkeypatch.setattr(
        sp, "varlen_kernel", lambda query: lambda *a, **kw: calls.append(1) or varlen_stand_in(*a, **kw)
    )
    torch.manual_seed(2)
    n, d = 83, 8
    q, k, v = torch.randn(1, heads, n, d), torch.randn(1, kv_heads, n, d), torch.randn(1, kv_heads, n, d)
    scores = torch.rand(1, kv_heads, n)
    cfg = SparsePrefillConfig(prefill_vertical_size=6, prefill_window_size=10, query_block=16, min_tokens=0)
    out, widest = vertical_slash(q, k, v, scores, cfg, 0.3)
    assert calls == [1] and widest == 6 + 10 + 16
    assert torch.allclose(out, reference(q, k, v, scores, cfg, 0.3), atol=1e-5)


def test_varlen_kernel_only_for_half_precision_cuda():
    from draft_rag.sparse_prefill import varlen_kernel

    assert varlen_kernel(torch.zeros(1, dtype=torch.bfloat16)) is None  # CPU: the SDPA blocks
    assert varlen_kernel(torch.zeros(1)) is None


def test_a_failed_flash_attn_import_is_logged_once_with_its_reason(monkeypatch, caplog):
    import sys

    from draft_rag.sparse_prefill import flash_varlen

    monkeypatch.setitem(sys.modules, "flash_attn", None)  # importing it raises ImportError
    flash_varlen.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="draft_rag.sparse_prefill"):
            assert flash_varlen() is None and flash_varlen() is None
    finally:
        flash_varlen.cache_clear()
    logged = [r.getMessage() for r in caplog.records if r.name == "draft_rag.sparse_prefill"]
    assert len(logged) == 1 and "ModuleNotFoundError: import of flash_attn" in logged[0] and "SDPA" in logged[0]


def test_every_column_selected_is_dense_attention():
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 4, 70, 8), torch.randn(1, 2, 70, 8), torch.randn(1, 2, 70, 8)
    cfg = SparsePrefillConfig(prefill_vertical_size=70, prefill_window_size=5, query_block=9, min_tokens=0)
    out, _ = vertical_slash(q, k, v, torch.rand(1, 2, 70), cfg, 8**-0.5)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.allclose(out, dense, atol=1e-5)


@pytest.mark.parametrize("arch,full_layers", [("llama", 3), ("qwen2", 3), ("gemma3", 1)])
def test_models_with_every_column_match_dense_prefill(arch, full_layers, device_dtype):
    """Llama, Qwen2 and Gemma-3 shapes; Gemma-3's sliding-window layers keep their own kernel. On CUDA in bf16
    the blocks go to flash-attn's varlen kernel where it imports."""
    model = on_device(tiny_model(arch).model, device_dtype)
    ids = torch.randint(5, 200, (1, 260), generator=torch.Generator().manual_seed(2)).to(device_dtype[0])
    every = SparsePrefillConfig(prefill_vertical_size=260, prefill_window_size=16, query_block=32, min_tokens=0)
    few = SparsePrefillConfig(prefill_vertical_size=8, prefill_window_size=16, query_block=32, min_tokens=0)
    with torch.no_grad():
        dense = model(input_ids=ids).logits
        with sparse_prefill(model, every, 260, 8) as stats:
            exact = model(input_ids=ids).logits
        with sparse_prefill(model, few, 260, 8) as sparse_stats:
            sparse = model(input_ids=ids).logits
    assert stats.layers == sparse_stats.layers == full_layers
    close = {"atol": 1e-4} if device_dtype[1] == torch.float32 else {"atol": 5e-2, "rtol": 5e-2}
    assert torch.allclose(exact.float(), dense.float(), **close)
    assert not torch.allclose(sparse.float(), dense.float(), **close)  # fewer columns: an approximate prefill
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, dense)  # outside the block: the model's own kernel


def test_short_prefills_and_decoding_steps_use_the_model_kernel():
    cfg = SparsePrefillConfig(prefill_vertical_size=16, prefill_window_size=16)
    assert cfg.min_tokens == 32
    kernel = VerticalSlash(cfg, 40, 8, SparseStats())
    q = torch.zeros(1, 2, 40, 4)
    assert kernel.applies(q, torch.zeros(1, 2, 40, 4), {})
    assert not kernel.applies(q[:, :, :32], torch.zeros(1, 2, 32, 4), {})  # not longer than min_tokens
    assert not kernel.applies(q[:, :, -1:], torch.zeros(1, 2, 40, 4), {})  # a decoding step
    assert not kernel.applies(q, torch.zeros(1, 2, 40, 4), {"sliding_window": 16})
    assert not kernel.applies(q, torch.zeros(1, 2, 40, 4), {"softcap": 30.0})
    assert not kernel.applies(torch.zeros(2, 2, 40, 4), torch.zeros(2, 2, 40, 4), {})  # a batch


def test_config_names_bad_settings():
    with pytest.raises(ValueError, match="prefill_vertical_size must be an integer >= 1"):
        SparsePrefillConfig(prefill_vertical_size=0)
    with pytest.raises(ValueError, match="min_tokens must be an integer >= 0"):
        SparsePrefillConfig(min_tokens=-1)
    with pytest.raises(ValueError, match="sparse_prefill must be True, False, None or a SparsePrefillConfig"):
        SparsePrefillConfig.parse("yes")
    assert SparsePrefillConfig.parse(True) == SparsePrefillConfig() and SparsePrefillConfig.parse(False) is None


@pytest.fixture(scope="module")
def engine():
    small = SpecPCConfig(starting_layer_index=0, window_size=8, kernel_size=5, neighbor_tokens=4)
    return DraftEngine(target=tiny_model("llama"), specpc=small)


PROMPT = " ".join(f"item{i} is {i * 7 % 13}." for i in range(150))


@pytest.mark.parametrize("method,kw", [("full", {}), ("speckv", {"budget": 96}), ("speckv-pc", {"budget": 96})])
def test_engine_methods_prefill_sparse_when_asked(engine, method, kw):
    cfg = SparsePrefillConfig(prefill_vertical_size=64, prefill_window_size=64, query_block=64, min_tokens=128)
    args = dict(question="What is item42?", method=method, max_new_tokens=3, **kw)
    sparse = engine.generate(PROMPT, sparse_prefill=cfg, **args)
    dense = engine.generate(PROMPT, **args)
    assert sparse.stats.sparse_layers == 3 and dense.stats.sparse_layers == 0
    assert sparse.stats.prompt_tokens == dense.stats.prompt_tokens > 128
    assert sparse.stats.kv_entries == dense.stats.kv_entries  # eviction keeps as many entries either way
    every = cfg.__class__(prefill_vertical_size=4096, prefill_window_size=64, query_block=64, min_tokens=128)
    assert engine.generate(PROMPT, sparse_prefill=every, **args).text == dense.text


def test_engine_default_and_the_paper_threshold(engine):
    assert engine.generate(PROMPT, method="full", max_new_tokens=1, sparse_prefill=True).stats.sparse_layers == 0
    local = DraftEngine(target=engine.target, specpc=engine.specpc, sparse_prefill=SparsePrefillConfig(min_tokens=64))
    assert local.generate(PROMPT, method="full", max_new_tokens=1).stats.sparse_layers == 3
    assert local.generate(PROMPT, method="full", max_new_tokens=1, sparse_prefill=False).stats.sparse_layers == 0
    with pytest.raises(ValueError, match="sparse_prefill must be"):
        engine.generate(PROMPT, sparse_prefill="on")


def _recording(engine, monkeypatch) -> list[dict]:
    """The settings of every ``engine.stream`` call from now on (its keyword arguments over its ``options``'
    fields); ``sparse_prefill=True`` means a config that is sparse from 64 tokens (the default starts above the tiny
    model's 4,096 positions)."""
    calls, stream, parse = [], engine.stream, SparsePrefillConfig.parse
    small = SparsePrefillConfig(prefill_vertical_size=16, prefill_window_size=16, query_block=16, min_tokens=64)

    def record(*args, **kwargs):
        options = kwargs.get("options")
        calls.append({**(dataclasses.asdict(options) if options else {}), **kwargs})
        return stream(*args, **kwargs)

    monkeypatch.setattr(engine, "stream", record)
    monkeypatch.setattr(SparsePrefillConfig, "parse", staticmethod(lambda v: small if v is True else parse(v)))
    return calls


def test_langchain_adapters_pass_sparse_prefill_to_local_targets_only(monkeypatch):
    from langchain_core.language_models import FakeListChatModel

    from langchain_draft_rag import ChatDraftCompressed, DraftCompressedLLM

    chat = ChatDraftCompressed(target=tiny_model("llama"), method="full", max_tokens=2, sparse_prefill=True)
    calls = _recording(chat.engine, monkeypatch)
    reply = chat.invoke(PROMPT)
    assert reply.response_metadata["draft_rag"]["sparse_layers"] == 3  # every layer's prefill ran sparse
    llm = DraftCompressedLLM(target=tiny_model("llama"), method="full", max_tokens=2, sparse_prefill=True)
    assert llm.generate([PROMPT]).generations[0][0].generation_info["draft_rag"]["sparse_layers"] == 3
    dense = ChatDraftCompressed(target=tiny_model("llama"), method="full", max_tokens=2)
    assert dense.invoke(PROMPT).response_metadata["draft_rag"]["sparse_layers"] == 0
    assert calls[0]["sparse_prefill"] is True and chat._identifying_params["sparse_prefill"] is True
    with pytest.raises(ValueError, match="sparse_prefill=True needs a local target"):
        ChatDraftCompressed(llm=FakeListChatModel(responses=["x"]), sparse_prefill=True)


def test_llamaindex_llm_passes_sparse_prefill_to_local_targets_only(monkeypatch):
    pytest.importorskip("llama_index.core")
    from llama_index.core.llms import MockLLM

    from llama_index.llms.draft_rag import DraftCompressedLLM

    llm = DraftCompressedLLM(target=tiny_model("llama"), method="full", max_new_tokens=2, sparse_prefill=True)
    calls = _recording(llm.engine, monkeypatch)
    assert llm.complete(PROMPT).additional_kwargs["draft_rag"]["sparse_layers"] == 3
    assert calls[0]["sparse_prefill"] is True and llm.to_dict()["sparse_prefill"] is True
    dense = DraftCompressedLLM(target=tiny_model("llama"), method="full", max_new_tokens=2)
    assert dense.complete(PROMPT).additional_kwargs["draft_rag"]["sparse_layers"] == 0
    with pytest.raises(ValueError, match="sparse_prefill=True needs a local target"):
        DraftCompressedLLM(llm=MockLLM(), sparse_prefill=True)
