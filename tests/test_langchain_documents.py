"""DraftDocumentCompressor: draft scores, pruning rules, metadata/ids/order, token-level compression, async,
ContextualCompressionRetriever; the real SmolLM2 finds the needle document (slow)."""

from __future__ import annotations

import asyncio

import pytest
from conftest import needle_prompt, tiny_model
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import InMemoryVectorStore

from draft_rag import Chunk, SpecPCConfig
from draft_rag.engine import shared_engine
from draft_rag.prompt import count_tokens
from draft_rag.units import render
from langchain_draft_rag import DraftDocumentCompressor

CFG = SpecPCConfig(starting_layer_index=1, window_size=8, kernel_size=8, neighbor_tokens=8)
QUERY = "What is the special magic number for ocean?"


def docs():
    texts = [
        "The grass is green. " * 6,
        "The special magic number for ocean is 4728163.",
        "",
        "The sky is blue and the sun is yellow. " * 4,
        "   ",
        "Here we go, there and back again. " * 3,
    ]
    return [Document(t, id=f"d{i}", metadata={"source": f"s{i}", "page": i}) for i, t in enumerate(texts)]


def compressor(**kw):
    return DraftDocumentCompressor(**{"draft": tiny_model("llama"), "specpc": CFG, **kw})


def engine_scores():
    return shared_engine(None, tiny_model("llama"), CFG).score_chunks(
        [Chunk(d.page_content, id=i) for i, d in enumerate(docs())], question=QUERY
    )


def check_kept(out, ids):
    """Kept documents: given ids in input order, own metadata plus score and spans, text unchanged."""
    original = {d.id: d for d in docs()}
    scores = dict(zip([d.id for d in docs()], engine_scores()))
    assert [d.id for d in out] == ids
    for d in out:
        src = original[d.id]
        assert {k: d.metadata[k] for k in src.metadata} == src.metadata
        assert d.metadata["draft_rag_score"] == pytest.approx(scores[d.id])
        assert render(src.page_content, d.metadata["draft_rag_kept_spans"]) == d.page_content


def test_top_n_keeps_the_best_scored_in_input_order():
    scores = engine_scores()
    best = sorted(range(len(scores)), key=lambda i: -scores[i])[:3]
    out = compressor(top_n=3).compress_documents(docs(), QUERY)
    check_kept(out, [f"d{i}" for i in sorted(best)])
    assert all(d.metadata["draft_rag_kept_fraction"] == 1.0 for d in out)
    assert scores[2] == 0.0  # the empty document


def test_threshold_and_token_budget():
    scores = engine_scores()
    cut = sorted(scores)[3]
    out = compressor(threshold=cut).compress_documents(docs(), QUERY)
    check_kept(out, [f"d{i}" for i, s in enumerate(scores) if s >= cut])
    tok = tiny_model("llama").tokenizer
    for budget in (20, 60):
        out = compressor(budget=budget).compress_documents(docs(), QUERY)
        assert out
        used = sum(count_tokens(tok, d.page_content) for d in out)
        best = max(out, key=lambda d: d.metadata["draft_rag_score"])
        assert used <= budget or len(out) == 1
        assert best.metadata["draft_rag_score"] == pytest.approx(max(scores))


def test_token_level_compression_keeps_spans_and_metadata():
    out = compressor(top_n=4, compress_tokens=True, budget=60).compress_documents(docs(), QUERY)
    assert out and all(d.page_content for d in out)
    check_kept(out, sorted((d.id for d in out), key=lambda i: int(i[1:])))
    total = sum(count_tokens(tiny_model("llama").tokenizer, d.page_content) for d in out)
    assert total < sum(count_tokens(tiny_model("llama").tokenizer, d.page_content) for d in docs())
    assert any(d.metadata["draft_rag_kept_fraction"] < 1.0 for d in out)


def test_documents_within_the_budget_come_back_whole():
    out = compressor(compress_tokens=True, budget=4000).compress_documents(docs(), QUERY)
    assert [d.page_content for d in out] == [d.page_content for d in docs()]
    assert all(d.metadata["draft_rag_kept_fraction"] == 1.0 for d in out if d.page_content)
    check_kept(out, [d.id for d in docs()])


def test_no_filters_keep_everything_and_inputs_are_not_mutated():
    before = docs()
    out = compressor().compress_documents(before, QUERY)
    check_kept(out, [d.id for d in docs()])
    assert before == docs()  # copies were annotated, not the inputs


def test_async_matches_sync():
    c = compressor(top_n=2)
    assert asyncio.run(c.acompress_documents(docs(), QUERY)) == c.compress_documents(docs(), QUERY)


def test_bad_input():
    c = compressor(top_n=2)
    assert c.compress_documents([], QUERY) == []
    with pytest.raises(ValueError, match="query must be a non-empty string"):
        c.compress_documents(docs(), "  ")
    with pytest.raises(TypeError, match=r"documents\[1\] must be a langchain_core Document"):
        c.compress_documents([docs()[0], "text"], QUERY)
    with pytest.raises(TypeError, match="sequence of Document"):
        c.compress_documents("just a string", QUERY)
    with pytest.raises(ValueError, match="top_n"):
        compressor(top_n=0)
    with pytest.raises(ValueError, match="compress_tokens=True needs budget"):
        compressor(compress_tokens=True)
    with pytest.raises(ValueError, match="either budget"):
        compressor(budget=10, ratio=0.2)


def test_in_a_contextual_compression_retriever():
    retrievers = pytest.importorskip("langchain_classic.retrievers")
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=16))
    store.add_documents(docs()[:2] + docs()[3:4])
    retriever = retrievers.ContextualCompressionRetriever(
        base_compressor=compressor(top_n=1), base_retriever=store.as_retriever(search_kwargs={"k": 3})
    )
    out = retriever.invoke(QUERY)
    assert len(out) == 1 and out[0].id in {"d0", "d1", "d3"} and "draft_rag_score" in out[0].metadata
    assert asyncio.run(retriever.ainvoke(QUERY)) == out


@pytest.mark.slow
def test_smollm_keeps_the_needle_document(smollm):
    filler, question, answer = needle_prompt(0)
    haystack = [
        "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. " * 3
        for _ in range(8)
    ]
    haystack.insert(5, "The special magic number for ocean is 4728163.")
    documents = [Document(t, metadata={"n": i}) for i, t in enumerate(haystack)]
    out = DraftDocumentCompressor(draft=smollm, top_n=1).compress_documents(documents, question)
    assert [d.metadata["n"] for d in out] == [5] and answer in "".join(d.page_content for d in out)


def test_budget_auto_keeps_what_fits_the_context_window():
    from langchain_core.callbacks import BaseCallbackHandler

    from draft_rag.config import AUTO_MARGIN

    class Ends(BaseCallbackHandler):
        outputs: list = []

        def on_chain_end(self, outputs, **kwargs):
            self.outputs.append(outputs)

    ends = Ends()
    auto = compressor(budget="auto", context_window=80).compress_documents(docs(), QUERY, callbacks=[ends])
    fixed = compressor(budget=int(80 * AUTO_MARGIN)).compress_documents(docs(), QUERY)  # the same selection
    assert [d.id for d in auto] == [d.id for d in fixed] and 0 < len(auto) < len(docs())
    n = int(80 * AUTO_MARGIN)
    assert ends.outputs[-1]["budget_reason"] == f"budget='auto': {n} draft tokens, 97% of context_window=80"
    with pytest.raises(ValueError, match="needs context_window"):
        compressor(budget="auto")
