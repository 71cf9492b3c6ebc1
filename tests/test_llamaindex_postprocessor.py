"""DraftNodePostprocessor with real LlamaIndex nodes, callbacks and instrumentation."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("llama_index.core")

from conftest import tiny_model  # noqa: E402
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload  # noqa: E402
from llama_index.core.callbacks.base_handler import BaseCallbackHandler  # noqa: E402
from llama_index.core.postprocessor import SimilarityPostprocessor  # noqa: E402
from llama_index.core.schema import (
    ImageNode,
    MetadataMode,
    NodeRelationship,
    NodeWithScore,  # noqa: E402
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)

from draft_rag import SpecPCConfig  # noqa: E402
from draft_rag.config import AUTO_MARGIN  # noqa: E402
from draft_rag.selection import select_chunks  # noqa: E402
from draft_rag.units import render
from llama_index.postprocessor.draft_rag import DraftNodePostprocessor  # noqa: E402

TEXTS = [
    "Bananas are yellow fruits that grow in warm countries and are rich in potassium.",
    "The Eiffel Tower in Paris was finished in 1889 for the World's Fair.",
    "The secret code that opens the red vault is 4721.",
    "Python is a programming language created by Guido van Rossum in 1991.",
    "Mount Everest is the highest mountain above sea level, at 8849 metres.",
]
QUERY = "What is the secret code that opens the red vault?"
TINY_SPECPC = SpecPCConfig(starting_layer_index=0, window_size=8, kernel_size=5, neighbor_tokens=4, granularity="token")


def make_nodes(texts=TEXTS) -> list[NodeWithScore]:
    out = []
    for i, t in enumerate(texts):
        node = TextNode(text=t, id_=f"node-{i}", metadata={"source": f"doc{i}.txt", "page": i})
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"doc{i}")
        out.append(NodeWithScore(node=node, score=0.9 - 0.1 * i))
    return out


def tiny_pp(**kwargs) -> DraftNodePostprocessor:
    return DraftNodePostprocessor(draft=tiny_model("llama"), specpc=TINY_SPECPC, **kwargs)


class Callbacks(BaseCallbackHandler):
    def __init__(self):
        super().__init__([], [])
        self.ends: list = []

    def on_event_start(self, event_type, payload=None, event_id="", parent_id="", **kwargs):
        return event_id

    def on_event_end(self, event_type, payload=None, event_id="", **kwargs):
        self.ends.append((event_type, payload))

    def start_trace(self, trace_id=None):
        pass

    def end_trace(self, trace_id=None, trace_map=None):
        pass


def test_select_chunks_filters_in_order():
    scores, sizes = [0.1, 0.5, 0.3, 0.5], [10, 10, 30, 10]
    assert select_chunks(scores, sizes) == [0, 1, 2, 3]
    assert select_chunks(scores, sizes, top_n=2) == [1, 3]  # ties keep input order
    assert select_chunks(scores, sizes, threshold=0.3) == [1, 2, 3]
    assert select_chunks(scores, sizes, budget=25) == [1, 3]  # 2 no longer fits, 0 would not either
    assert select_chunks(scores, sizes, budget=5) == [1]  # the best one is always kept
    assert select_chunks(scores, sizes, ratio=0.5) == [0, 1, 3]  # 30 tokens: 10 + 10, skip 30, then 10
    assert select_chunks(scores, sizes, budget=1000) == [0, 1, 2, 3]
    assert select_chunks(scores, sizes, threshold=0.9) == []
    with pytest.raises(ValueError, match="budget"):
        select_chunks(scores, sizes, budget=10, ratio=0.5)
    with pytest.raises(ValueError, match="top_n"):
        select_chunks(scores, sizes, top_n=0)
    with pytest.raises(ValueError, match="same length"):
        select_chunks(scores, sizes[:2])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"top_n": 0}, "top_n"),
        ({"budget": 10, "ratio": 0.5}, "budget"),
        ({"ratio": 1.5}, "ratio"),
        ({"compress_tokens": True}, "compress_tokens"),
        ({"threshold": "high"}, "threshold"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_pp(**kwargs)


def test_no_query_and_empty_input():
    pp = tiny_pp(top_n=2)
    with pytest.raises(ValueError, match="query"):
        pp.postprocess_nodes(make_nodes())
    assert pp.postprocess_nodes([], query_str=QUERY) == []
    with pytest.raises(TypeError, match=r"nodes\[0\] must be a NodeWithScore"):
        pp.postprocess_nodes([TextNode(text="x")], query_str=QUERY)


def test_keeps_original_objects_ids_metadata_relationships():
    nodes = make_nodes()
    before = [
        (
            n.node.node_id,
            dict(n.node.metadata),
            n.node.relationships[NodeRelationship.SOURCE].node_id,
            n.node.get_content(metadata_mode=MetadataMode.LLM),
            n.score,
        )
        for n in nodes
    ]
    out = tiny_pp(top_n=3).postprocess_nodes(list(nodes), query_str=QUERY)
    assert len(out) == 3
    assert not any(o is n or o.node is n.node for o in out for n in nodes)  # copies: the caller's are untouched
    assert [(n.node.node_id, dict(n.node.metadata), n.score) for n in nodes] == [(b[0], b[1], b[4]) for b in before]
    positions = [next(i for i, n in enumerate(nodes) if n.node.node_id == o.node.node_id) for o in out]
    assert positions == sorted(positions)  # retrieval order
    for o, i in zip(out, positions):
        node_id, meta, source, llm_text, retrieval = before[i]
        assert o.node.node_id == node_id and o.node.relationships[NodeRelationship.SOURCE].node_id == source
        assert {k: v for k, v in o.node.metadata.items() if k not in ("retrieval_score", "draft_rag_score")} == meta
        assert o.node.metadata["retrieval_score"] == retrieval == o.score  # the retriever's score stays the score
        assert isinstance(o.node.metadata["draft_rag_score"], float) and o.node.metadata["draft_rag_score"] >= 0.0
        assert o.node.get_content(metadata_mode=MetadataMode.LLM) == llm_text  # score hidden from the LLM


def test_textless_and_duplicate_nodes_pass_through(caplog):
    nodes = make_nodes(TEXTS[:3])
    image = NodeWithScore(node=ImageNode(id_="img", image="aGVsbG8=", metadata={"kind": "image"}), score=0.5)
    dup = NodeWithScore(node=TextNode(text=TEXTS[0], id_="node-0"), score=0.4)
    with caplog.at_level(logging.WARNING):
        out = tiny_pp(top_n=10, sort_by_score=True).postprocess_nodes(nodes + [image, dup], query_str=QUERY)
    assert "duplicate node ids" in caplog.text
    assert len(out) == 5 and sum(o.node.node_id == "node-0" for o in out) == 2
    out_image = next(o for o in out if o.node.node_id == "img")
    assert out_image.score == 0.5 and out_image.node.metadata["draft_rag_score"] == 0.0 and image.score == 0.5
    drafted = [o.node.metadata["draft_rag_score"] for o in out]
    assert drafted == sorted(drafted, reverse=True)  # sort_by_score: the draft's score


def test_budget_larger_than_input_keeps_everything_and_scores_it():
    nodes = make_nodes()
    out = tiny_pp(budget=100_000).postprocess_nodes(nodes, query_str=QUERY)
    assert [o.node.node_id for o in out] == [n.node.node_id for n in nodes]
    assert all(isinstance(o.score, float) for o in out)


def test_token_budget_drops_whole_nodes():
    nodes = make_nodes()
    sizes = [len(tiny_model("llama").tokenizer(t)["input_ids"]) for t in TEXTS]
    out = tiny_pp(budget=sum(sizes) // 2).postprocess_nodes(nodes, query_str=QUERY)
    assert 1 <= len(out) < len(nodes)
    assert sum(sizes[int(o.node.node_id.split("-")[1])] for o in out) <= sum(sizes) // 2


def test_compress_tokens_copies_changed_nodes_with_ids_and_metadata():
    nodes = make_nodes()
    originals = {n.node.node_id: n.node for n in nodes}
    out = tiny_pp(budget=60, compress_tokens=True).postprocess_nodes(nodes, query_str=QUERY)
    assert out and not any(o is n for o in out for n in nodes)
    changed = [o for o in out if o.node is not originals[o.node.node_id]]
    assert changed, "a 60-token budget must shorten some node"
    for o in changed:
        orig = originals[o.node.node_id]
        assert len(o.node.text) < len(orig.text)
        assert o.node.relationships == orig.relationships and o.node.metadata["source"] == orig.metadata["source"]
        assert 0 < o.node.metadata["draft_rag_kept_fraction"] < 1
        assert render(orig.text, o.node.metadata["draft_rag_kept_spans"]) == o.node.text
        assert "draft_rag" not in o.node.get_content(metadata_mode=MetadataMode.LLM)


def test_callback_and_instrumentation_events_carry_token_counts(draft_events):
    handler = Callbacks()
    pp = tiny_pp(top_n=2, callback_manager=CallbackManager([handler]))
    out = pp.postprocess_nodes(make_nodes(), query_str=QUERY)
    ((event_type, payload),) = [e for e in handler.ends if e[0] == CBEventType.RERANKING]
    assert payload[EventPayload.NODES] == out
    stats = payload["draft_rag"]
    assert stats["nodes_in"] == 5 and stats["nodes_out"] == 2
    assert 0 < stats["compressed_tokens"] < stats["original_tokens"]
    ((ev,),) = [[e for e in draft_events if e.component == "postprocessor"]]
    assert ev.original_tokens == stats["original_tokens"] and ev.compressed_tokens == stats["compressed_tokens"]


def test_similarity_cutoff_after_it_still_filters_on_the_retrievers_score():
    nodes = make_nodes()
    retrieval = {n.node.node_id: n.score for n in nodes}
    out = tiny_pp(top_n=4).postprocess_nodes(nodes, query_str=QUERY)
    cutoff = sorted(retrieval[o.node.node_id] for o in out)[1]
    after = SimilarityPostprocessor(similarity_cutoff=cutoff).postprocess_nodes(out, query_str=QUERY)
    assert [a.node.node_id for a in after] == [o.node.node_id for o in out if retrieval[o.node.node_id] >= cutoff]
    assert len(after) == 3


def test_budget_auto_fits_the_context_window():
    nodes = make_nodes()
    handler = Callbacks()
    pp = tiny_pp(budget="auto", context_window=60, callback_manager=CallbackManager([handler]))
    out = pp.postprocess_nodes(nodes, query_str=QUERY)
    stats = next(p for t, p in handler.ends if t == CBEventType.RERANKING)["draft_rag"]
    fixed = tiny_pp(budget=int(60 * AUTO_MARGIN)).postprocess_nodes(nodes, query_str=QUERY)
    assert [o.node.node_id for o in out] == [o.node.node_id for o in fixed] and 0 < len(out) < len(nodes)
    assert stats["budget_reason"] == f"budget='auto': {int(60 * AUTO_MARGIN)} draft tokens, 97% of context_window=60"
    with pytest.raises(ValueError, match="context_window"):
        tiny_pp(budget="auto")
    with pytest.raises(ValueError, match="context_window=60 is for budget='auto'"):
        tiny_pp(budget=50, context_window=60)


async def test_async_path():
    pp = tiny_pp(top_n=2)
    out = await pp.apostprocess_nodes(make_nodes(), query_bundle=QueryBundle(QUERY))
    assert len(out) == 2 and all(isinstance(o.score, float) for o in out)


@pytest.mark.slow
def test_real_draft_finds_the_relevant_node(smollm):
    nodes = make_nodes()
    out = DraftNodePostprocessor(draft=smollm, top_n=2).postprocess_nodes(nodes, query_str=QUERY)
    assert "node-2" in [o.node.node_id for o in out]


@pytest.mark.slow
def test_same_result_as_the_langchain_compressor(smollm):
    lc = pytest.importorskip("langchain_draft_rag")
    from langchain_core.documents import Document

    nodes = make_nodes()
    out = DraftNodePostprocessor(draft=smollm, budget=70, compress_tokens=True).postprocess_nodes(
        nodes, query_str=QUERY
    )
    docs = lc.DraftDocumentCompressor(draft=smollm, budget=70, compress_tokens=True).compress_documents(
        [Document(page_content=t, id=f"node-{i}") for i, t in enumerate(TEXTS)], QUERY
    )
    assert [o.node.text for o in out] == [d.page_content for d in docs]
    assert [o.node.metadata["draft_rag_score"] for o in out] == pytest.approx(
        [d.metadata["draft_rag_score"] for d in docs]
    )


@pytest.mark.parametrize("compress_tokens", [False, True])
def test_retrieval_score_survives_repeated_and_chained_runs(compress_tokens):
    nodes = make_nodes()
    before = [(n.node.node_id, n.node.get_content(), dict(n.node.metadata), n.score) for n in nodes]
    pp = tiny_pp(budget=60, compress_tokens=compress_tokens)
    first = pp.postprocess_nodes(nodes, query_str=QUERY)
    second = pp.postprocess_nodes(nodes, query_str=QUERY)
    chained = pp.postprocess_nodes(first, query_str=QUERY)
    assert [(n.node.node_id, n.node.get_content(), dict(n.node.metadata), n.score) for n in nodes] == before
    retrieval = {b[0]: b[3] for b in before}
    for out in (first, second, chained):
        assert out and all(o.node.metadata["retrieval_score"] == retrieval[o.node.node_id] for o in out)
    assert [(o.node.node_id, o.score, o.node.get_content()) for o in first] == [
        (o.node.node_id, o.score, o.node.get_content()) for o in second
    ]
