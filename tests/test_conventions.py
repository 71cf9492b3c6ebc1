"""Framework conventions: LlamaIndex to_dict/from_dict and metadata; LangChain child runs, relevance_score and
_identifying_params."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("langchain_core")

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
from llama_index.core.llms import MockLLM

from draft_rag import SpecKVConfig, SpecPCConfig
from langchain_draft_rag import ChatDraftCompressed, DraftDocumentCompressor
from llama_index.llms.draft_rag import DraftCompressedLLM
from llama_index.postprocessor.draft_rag import DraftNodePostprocessor

CFG = SpecPCConfig(starting_layer_index=1, window_size=8, kernel_size=8, neighbor_tokens=8)
KV = SpecKVConfig(window_size=8)
QUERY = "What is the special magic number for ocean?"
TEXTS = ["The grass is green. " * 6, "The special magic number for ocean is 4728163.", "The sky is blue. " * 5]


def test_llamaindex_llm_round_trips_through_a_dict_with_model_refs_as_strings(tiny_dir):
    llm = DraftCompressedLLM(
        target=tiny_dir,
        draft=tiny_dir,
        method="speckv",
        budget=32,
        specpc=CFG,
        speckv=KV,
        target_kwargs={"dtype": "float32"},
    )
    data = json.loads(llm.to_json())
    assert data["class_name"] == DraftCompressedLLM.class_name() == "DraftCompressedLLM"
    assert data["target"] == data["draft"] == tiny_dir and data["specpc"]["window_size"] == 8
    back = DraftCompressedLLM.from_dict(data)
    assert back.method == "speckv" and back.budget == 32 and back.target_kwargs == {"dtype": "float32"}
    assert back.engine.specpc == CFG and back.engine.speckv == KV
    assert back.engine.target.model is llm.engine.target.model  # the same ref and options: loaded once
    assert back.to_dict() == llm.to_dict()

    front = DraftCompressedLLM(llm=MockLLM(), draft=tiny_dir, budget=16, specpc=CFG)
    data = front.to_dict()
    assert "target" not in data and data["draft"] == tiny_dir
    assert DraftCompressedLLM.from_dict(data, llm=MockLLM()).to_dict() == data  # the wrapped LLM is given again


def test_llamaindex_metadata_reports_the_targets_window_and_chat_mode(tiny_dir):
    llm = DraftCompressedLLM(target=tiny_dir, method="full")
    window = llm.engine.target.model.config.max_position_embeddings
    assert llm.metadata.context_window == window and llm.metadata.is_chat_model is True  # it has a chat template
    inner = MockLLM(max_tokens=8)
    front = DraftCompressedLLM(llm=inner, draft=tiny_dir, budget=16, specpc=CFG)
    assert front.metadata.is_chat_model == inner.metadata.is_chat_model
    assert front.metadata.context_window == min(inner.metadata.context_window, window)


def test_llamaindex_postprocessor_round_trips_through_a_dict(tiny_dir):
    post = DraftNodePostprocessor(draft=tiny_dir, top_n=2, specpc=CFG, draft_kwargs={"device_map": "auto"})
    data = json.loads(post.to_json())
    assert data["class_name"] == "DraftNodePostprocessor" and data["draft"] == tiny_dir
    back = DraftNodePostprocessor.from_dict(data)
    assert back.top_n == 2 and back.engine.specpc == CFG and back.draft_kwargs == {"device_map": "auto"}
    assert back.to_dict() == post.to_dict()


class _Fixed(BaseRetriever):
    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [Document(t, id=f"d{i}", metadata={"page": i}) for i, t in enumerate(TEXTS)]


def test_langchain_compressor_is_a_child_run_with_its_stats_and_sets_relevance_score(tiny_dir):
    retrievers = pytest.importorskip("langchain_classic.retrievers")
    pruner = DraftDocumentCompressor(draft=tiny_dir, specpc=CFG, top_n=2)
    retriever = retrievers.ContextualCompressionRetriever(base_compressor=pruner, base_retriever=_Fixed())
    collector = RunCollectorCallbackHandler()
    out = retriever.invoke(QUERY, config={"callbacks": [collector]})
    assert len(out) == 2
    for doc in out:
        assert doc.metadata["relevance_score"] == doc.metadata["draft_rag_score"]
    root = collector.traced_runs[0]
    child = next(r for r in root.child_runs if r.name == "DraftDocumentCompressor")
    assert child.inputs == {"query": QUERY, "documents": 3}
    assert child.outputs["documents_in"] == 3 and child.outputs["documents_out"] == 2
    assert 0 < child.outputs["compressed_tokens"] < child.outputs["original_tokens"]


def test_langchain_identifying_params_are_complete(tiny_dir):
    chat = ChatDraftCompressed(
        target=tiny_dir,
        specpc=CFG,
        speckv=KV,
        method="speckv",
        budget=64,
        lookahead_tokens=3,
        draft_kwargs={"dtype": "float32"},
    )
    params = chat._identifying_params
    assert params["specpc"]["window_size"] == 8 and params["speckv"]["window_size"] == 8
    assert params["lookahead_tokens"] == 3 and params["draft_kwargs"] == {"dtype": "float32"}
    assert params["method"] == "speckv" and params["budget"] == 64 and params["model_name"] == tiny_dir
