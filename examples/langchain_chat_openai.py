"""Production recipe: LangChain ``ChatOpenAI`` (vLLM, TGI, llama.cpp, OpenAI) behind draft-rag compression, in LCEL.

    python examples/langchain_chat_openai.py --base-url http://vllm-host:8000/v1 \\
        --model meta-llama/Llama-3.1-8B-Instruct --context-window 131072 "How do I insert into a sorted list?"

The retriever is the MiniLM one of ``langchain_rag.py`` over ``pydoc`` text (swap in yours). Only the retrieved
context in the system prompt is compressed, by the local SmolLM2 draft; the instructions and the question reach the
remote model word for word. Give ``--context-window`` (the served model's window): a model name LangChain has no
profile for has no known window. ``tests/test_examples.py`` runs this against llama.cpp's server
(``scripts/llama_cpp_upstream.py``).
Needs, from a clone, ``pip install -e ".[embeddings]" -e integrations/langchain-draft-rag langchain-openai``.
"""

from __future__ import annotations

import argparse
import os

from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_openai import ChatOpenAI
from langchain_rag import MODULES, MiniLMEmbeddings, passages

from langchain_draft_rag import ChatDraftCompressed

PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer the question from the Python documentation below. Be brief.\n\nContext:\n{context}"),
        ("human", "{question}"),
    ]
)


def build_chain(
    base_url: str,
    model: str,
    api_key: str = "EMPTY",
    *,
    context_window: int | None = None,
    ratio: float | None = 0.3,
    draft="smollm2-135m-instruct",
    modules=MODULES,
    top_k: int = 6,
    max_tokens: int = 64,
):
    """question -> {"answer": AIMessage (with response_metadata["draft_rag"]), "question": str}."""
    remote = ChatOpenAI(model=model, base_url=base_url, api_key=api_key, max_tokens=max_tokens, temperature=0)
    chat = ChatDraftCompressed(llm=remote, draft=draft, ratio=ratio, context_window=context_window)
    retriever = InMemoryVectorStore.from_documents(passages(modules), MiniLMEmbeddings()).as_retriever(
        search_kwargs={"k": top_k}
    )
    context = retriever | (lambda docs: "\n\n".join(d.page_content for d in docs))
    return {"context": context, "question": RunnablePassthrough()} | RunnablePassthrough.assign(answer=PROMPT | chat)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("question", nargs="?", default="How do I insert into a sorted list and keep it sorted?")
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the OpenAI-compatible server")
    p.add_argument("--model", default="draft-rag", help="the served model's name")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "EMPTY"))
    p.add_argument("--context-window", type=int, help="the served model's window in tokens")
    p.add_argument("--ratio", type=float, default=0.3, help="fraction of the retrieved context kept")
    a = p.parse_args()
    chain = build_chain(a.base_url, a.model, a.api_key, context_window=a.context_window, ratio=a.ratio)
    answer = chain.invoke(a.question)["answer"]
    s = answer.response_metadata["draft_rag"]
    print(f"Q: {a.question}\nA: {answer.content.strip()}\n")
    print(f"context compressed {s['original_tokens']} -> {s['compressed_tokens']} tokens (draft tokenizer)")
    if answer.usage_metadata:
        print(f"the server read {answer.usage_metadata['input_tokens']} prompt tokens")


if __name__ == "__main__":
    main()
