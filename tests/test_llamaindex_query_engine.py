"""End to end: the example's VectorStoreIndex query engine on the real SmolLM2 and MiniLM, sync and async."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("llama_index.embeddings.huggingface")

from llama_index.core import Settings  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.schema import NodeRelationship  # noqa: E402

QUESTION = "Which function inserts an item into a sorted list and keeps it sorted?"


@pytest.fixture(scope="module")
def example():
    path = Path(__file__).resolve().parents[1] / "examples" / "llamaindex_rag.py"
    spec = importlib.util.spec_from_file_location("llamaindex_rag_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def query_engine(example, smollm):
    before = get_dispatcher().event_handlers[:]
    engine = example.build_query_engine(
        ("bisect", "heapq"), model=smollm, budget=160, top_k=4, top_n=2, max_new_tokens=12
    )
    yield engine
    get_dispatcher().event_handlers[:] = before
    Settings._llm, Settings._embed_model = None, None  # unset again (resolved lazily on next use)


@pytest.mark.slow
async def test_query_engine_sync_and_async(example, query_engine):
    example.SEEN.clear()
    response = query_engine.query(QUESTION)
    assert response.response.strip()
    assert len(response.source_nodes) == 2
    for n in response.source_nodes:
        assert isinstance(n.score, float) and isinstance(n.node.metadata["retrieval_score"], float)
        assert n.node.metadata["module"] in ("bisect", "heapq")
        assert NodeRelationship.SOURCE in n.node.relationships
    assert any(n.node.metadata["module"] == "bisect" for n in response.source_nodes)
    pp, llm = (
        [e for e in example.SEEN if e.component == "postprocessor"],
        [e for e in example.SEEN if e.component == "llm"],
    )
    assert len(pp) == 1 and (pp[0].nodes_in, pp[0].nodes_out) == (4, 2)
    assert len(llm) == 1 and llm[0].method == "specpc" and llm[0].compressed_tokens < llm[0].original_tokens
    again = await query_engine.aquery(QUESTION)
    assert again.response == response.response
    assert [n.node.node_id for n in again.source_nodes] == [n.node.node_id for n in response.source_nodes]
