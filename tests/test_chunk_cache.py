"""The chunk cache: each chunk read once by the draft, its KV moved to wherever the chunk comes back."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import CORPUS, tiny_config, tiny_model, tiny_tokenizer
from test_blocks import short_window_model

from draft_rag import DraftEngine, PromptInput, SpecPCConfig
from draft_rag.chunk_cache import ChunkCache
from draft_rag.models import LoadedModel
from draft_rag.prompt import tokenize, wrap
from draft_rag.scoring import cache_kwarg

CFG = SpecPCConfig(starting_layer_index=0, window_size=8, kernel_size=8, neighbor_tokens=8)
ASK = dict(question="What is the special magic number for ocean?", instruction="Read the passages.", ratio=0.3)
CHUNKS = [CORPUS[i * 240 : (i + 1) * 240] for i in range(6)]


def engine(model, chunk_mb: float = 64, cfg=CFG) -> DraftEngine:
    return DraftEngine(draft=model, specpc=cfg, context_cache_mb=0, chunk_cache_mb=chunk_mb)


def model_with(arch: str, **overrides) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = tiny_config(arch, **overrides)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32).eval()
    return LoadedModel(model, tiny_tokenizer(), f"tiny-{arch}-{sorted(overrides)}")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_one_chunk_scores_as_the_exact_pass_and_is_read_once(arch):
    exact = engine(tiny_model(arch), chunk_mb=0).compress(chunks=[CORPUS[:1500]], **ASK)
    fast = engine(tiny_model(arch))
    cold = fast.compress(chunks=[CORPUS[:1500]], **ASK)
    warm = fast.compress(chunks=[CORPUS[:1500]], **ASK)
    for got in (cold, warm):
        assert got.text == exact.text and got.kept_spans == exact.kept_spans
        assert max(abs(a[2] - b[2]) for a, b in zip(got.token_scores, exact.token_scores)) < 1e-6
    assert cold.draft_cached_tokens == 0 and warm.draft_cached_tokens > 0.8 * warm.draft_original_tokens
    assert fast.chunk_cache.misses == 2 and fast.chunk_cache.hits == 2  # the head and the chunk, once each


def assembled_and_exact(model: LoadedModel, chunks: list[str], warm_order: list[str]):
    """Layer 0's keys and values of a prompt's prefix, assembled from pieces read in another order, and exact."""
    store = ChunkCache(64)
    tok_of = tiny_tokenizer()

    def bound(parts):
        layout = wrap(PromptInput(None, parts, ASK["instruction"], ASK["question"]).segments, tok_of, "chat")
        tok = tokenize(tok_of, layout)
        return store.bind(model.model, tok.ids, [layout[g].role == "context" for g in tok.segment], tok.segment), tok

    bound(warm_order)[0].warm(model.model)
    prompt, tok = bound(chunks)
    prefix = len(tok.ids) - 30
    cache, start, reused = prompt.prefix(model.model, tok.ids, prefix)
    from transformers import DynamicCache

    full = DynamicCache(config=model.model.config)
    model.model(input_ids=torch.tensor([tok.ids[:prefix]]), use_cache=True, **{cache_kwarg(model.model): full})
    return cache.layers[0], full.layers[0], start, reused, prefix


@pytest.mark.parametrize(
    "arch, overrides",
    [
        ("llama", {}),
        ("qwen2", {}),
        ("qwen3", {}),  # keys normalised before the rotary
        ("mistral", {}),
        ("gemma3", {}),  # layer 0 slides (local rotary base), its cache keeps the last window
        ("gemma3", {"layer_types": ["full_attention", "sliding_attention", "sliding_attention"]}),  # global base
    ],
)
def test_each_piece_moves_to_its_position(arch, overrides):
    # layer 0's keys and values depend only on the token and its position: assembled must equal exact
    model = model_with(arch, **overrides)
    got, want, start, reused, prefix = assembled_and_exact(model, CHUNKS[:4], CHUNKS[3::-1])
    assert start == prefix and reused > 0
    assert got.keys.shape == want.keys.shape
    torch.testing.assert_close(got.keys, want.keys, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got.values, want.values, atol=2e-5, rtol=1e-4)


def gpt2() -> LoadedModel:
    """A tiny GPT-2: learned absolute positions, no rotary embedding."""
    from transformers import AutoModelForCausalLM, GPT2Config

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=3, n_head=4, n_positions=4096,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    return LoadedModel(AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval(), tok, "tiny-gpt2")


@pytest.mark.parametrize("kind", ["absolute positions", "rotary scaled by length"])
def test_positions_it_cannot_shift_fall_back_to_the_exact_pass(kind):
    if kind == "absolute positions":
        model = gpt2()
    else:
        model = model_with("llama", rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    fast = engine(model)
    got = fast.compress(chunks=CHUNKS, **ASK)
    assert got.text == engine(model, chunk_mb=0).compress(chunks=CHUNKS, **ASK).text
    assert fast.chunk_cache.fallbacks == 1 and len(fast.chunk_cache) == 0 and got.draft_cached_tokens == 0


def test_warmed_chunks_are_not_read_again_in_any_order_or_company():
    fast = engine(tiny_model("llama"))
    assert fast.warm_chunks(CHUNKS, instruction=ASK["instruction"]) > len(CHUNKS)  # chunks and separators
    misses = fast.chunk_cache.misses
    picked = fast.compress(chunks=[CHUNKS[4], CHUNKS[1], CHUNKS[2]], **ASK)
    assert fast.chunk_cache.misses == misses and picked.draft_cached_tokens > 0.8 * picked.draft_original_tokens
    assert fast.warm_chunks(CHUNKS, instruction=ASK["instruction"]) == 0
    # a piece's KV is the same whether read now or earlier: the result does not depend on the cache's state
    assert picked.text == engine(tiny_model("llama")).compress(chunks=[CHUNKS[4], CHUNKS[1], CHUNKS[2]], **ASK).text


def test_the_cache_stays_under_its_bound():
    small = engine(tiny_model("llama"), chunk_mb=0.1)
    for i in range(len(CHUNKS) - 2):
        small.compress(chunks=CHUNKS[i : i + 3], **ASK)
    assert 0 < small.chunk_cache.nbytes <= small.chunk_cache.max_bytes
    assert len(small.chunk_cache) < small.chunk_cache.misses
    assert (
        small.compress(chunks=CHUNKS[:3], **ASK).text
        == engine(tiny_model("llama")).compress(chunks=CHUNKS[:3], **ASK).text
    )


def test_blocks_assemble_each_pass_from_pieces():
    model = short_window_model("llama")
    cfg = CFG.replace(window_size=16)
    chunks = [CORPUS[i * 150 : (i + 1) * 150] for i in range(12)]
    fast = engine(model, cfg=cfg)
    cold = fast.compress(chunks=chunks, **ASK)
    warm = fast.compress(chunks=chunks, **ASK)
    assert cold.draft_blocks > 1 and warm.draft_cached_tokens > 0.5 * warm.draft_original_tokens
    assert warm.text == cold.text and warm.kept_spans == cold.kept_spans


def test_threads_share_one_chunk_cache():
    fast, want = engine(tiny_model("qwen2")), {}
    orders = [CHUNKS[i:] + CHUNKS[:i] for i in range(4)]
    for i, order in enumerate(orders):
        want[i] = engine(tiny_model("qwen2")).compress(chunks=order, **ASK).text
    got, errors = {}, []

    def run(i):
        try:
            fast.warm_chunks(orders[i][:2], instruction=ASK["instruction"])
            got[i] = fast.compress(chunks=orders[i], **ASK).text
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == want and fast.chunk_cache.hits > 0


def test_the_adapters_switch_it_on_and_leave_it_off_by_default():
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from langchain_draft_rag import DraftDocumentCompressor
    from llama_index.postprocessor.draft_rag import DraftNodePostprocessor

    docs = [Document(page_content=c, id=str(i)) for i, c in enumerate(CHUNKS)]
    assert not DraftDocumentCompressor(draft=tiny_model("llama"), specpc=CFG, top_n=2).engine.chunk_cache.enabled
    lc = DraftDocumentCompressor(draft=tiny_model("llama"), specpc=CFG, top_n=2, chunk_cache_mb=32)
    first = lc.compress_documents(docs, ASK["question"])
    assert lc.compress_documents(docs[::-1], ASK["question"]) and lc.engine.chunk_cache.hits >= len(CHUNKS)
    assert [d.id for d in first] == [d.id for d in lc.compress_documents(docs, ASK["question"])]
    nodes = [NodeWithScore(node=TextNode(text=c), score=1.0) for c in CHUNKS]
    li = DraftNodePostprocessor(draft=tiny_model("qwen2"), specpc=CFG, top_n=2, chunk_cache_mb=32)
    li.postprocess_nodes(nodes, query_str=ASK["question"])
    li.postprocess_nodes(nodes[::-1], query_str=ASK["question"])
    assert li.engine.chunk_cache.hits >= len(CHUNKS)


def test_the_frameworks_warm_it_while_indexing():
    """LlamaIndex's ingestion pipeline and LangChain's document transformers read the chunks into the pruners'
    chunk cache; a later query over some of them in another order reads no chunk again."""
    from langchain_core.documents import Document as LCDocument
    from llama_index.core import Document
    from llama_index.core.ingestion import IngestionPipeline
    from llama_index.core.schema import NodeWithScore, TextNode

    from langchain_draft_rag import DraftChunkWarmer as LCWarmer
    from langchain_draft_rag import DraftDocumentCompressor
    from llama_index.postprocessor.draft_rag import DraftChunkWarmer, DraftNodePostprocessor

    settings = dict(draft=tiny_model("llama"), specpc=CFG, top_n=2, instruction=ASK["instruction"])
    node_pruner = DraftNodePostprocessor(**settings, chunk_cache_mb=47)
    nodes = IngestionPipeline(transformations=[DraftChunkWarmer(postprocessor=node_pruner)]).run(
        documents=[Document(text=c) for c in CHUNKS]
    )
    assert [n.text for n in nodes] == CHUNKS
    doc_pruner = DraftDocumentCompressor(**settings, chunk_cache_mb=46)
    docs = [LCDocument(page_content=c, id=str(i)) for i, c in enumerate(CHUNKS)]
    assert LCWarmer(doc_pruner).transform_documents(docs) == docs
    for pruner in (node_pruner, doc_pruner):
        store = pruner.engine.chunk_cache
        misses, hits = store.misses, store.hits
        assert misses > len(CHUNKS)  # every chunk and separator was read while indexing
        if pruner is node_pruner:
            retrieved = [NodeWithScore(node=TextNode(text=c), score=1.0) for c in CHUNKS[3::-1]]
            kept = pruner.postprocess_nodes(retrieved, query_str=ASK["question"])
        else:
            kept = pruner.compress_documents(docs[3::-1], ASK["question"])
        assert len(kept) == 2 and store.misses == misses and store.hits > hits
    with pytest.raises(ValueError, match="chunk_cache_mb > 0"):
        DraftDocumentCompressor(**settings).warm(docs)
