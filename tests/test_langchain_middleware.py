"""DraftCompressionMiddleware in a LangChain v1 agent (create_agent) with a retrieval tool, sync and async."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("langchain.agents")
from conftest import tiny_model
from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from pydantic import Field
from test_chat_shapes import ANSWER, CONTEXT, NEEDLE, QUESTION

from draft_rag import SpecPCConfig
from langchain_draft_rag import ChatDraftCompressed, DraftCompressionMiddleware

CFG = SpecPCConfig(starting_layer_index=1, window_size=8, kernel_size=8, neighbor_tokens=8)


@tool(response_format="content_and_artifact")
def retrieve(query: str):
    """Retrieve passages about the query."""
    return CONTEXT, {"query": query, "passages": 14}


class ScriptedToolCaller(BaseChatModel):
    """Calls the retrieval tool once, then lets ``answerer`` (a real model, if given) write the answer."""

    answerer: BaseChatModel | None = None
    seen: list = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted-tool-caller"

    def bind_tools(self, tools, **kwargs):
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.seen.append(messages)
        if isinstance(messages[-1], ToolMessage):
            reply = self.answerer.invoke(messages) if self.answerer else AIMessage("done")
        else:
            reply = AIMessage("", tool_calls=[{"name": "retrieve", "args": {"query": messages[-1].text}, "id": "c-1"}])
        return ChatResult(generations=[ChatGeneration(message=reply)])


def check_run(state, model, ratio_bound=0.40):
    messages = state["messages"]
    tool_msg = next(m for m in messages if isinstance(m, ToolMessage))
    assert tool_msg.content == CONTEXT and tool_msg.artifact == {"query": QUESTION, "passages": 14}  # state: whole
    first, second = model.seen  # what the model saw: the tool result compressed, the rest as it was
    assert first[-1].content == QUESTION
    sent_tool = second[-1]
    assert (sent_tool.tool_call_id, sent_tool.name, sent_tool.artifact, sent_tool.id) == (
        tool_msg.tool_call_id,
        tool_msg.name,
        tool_msg.artifact,
        tool_msg.id,
    )
    assert second[0].content == "Answer from the retrieved passages." and second[1:-1] == messages[: len(second) - 2]
    assert len(sent_tool.content) <= ratio_bound * len(CONTEXT)
    stats = messages[-1].response_metadata["draft_rag"]
    assert stats["messages"][0]["message_index"] == len(second) - 1  # the system prompt is message 0
    return sent_tool, messages[-1]


def test_middleware_compresses_tool_results_for_any_model_sync_and_async():
    middleware = DraftCompressionMiddleware(draft=tiny_model("llama"), ratio=0.25, specpc=CFG)
    for run in ("sync", "async"):
        model = ScriptedToolCaller()
        agent = create_agent(
            model, tools=[retrieve], system_prompt="Answer from the retrieved passages.", middleware=[middleware]
        )
        inputs = {"messages": [HumanMessage(QUESTION)]}
        state = agent.invoke(inputs) if run == "sync" else asyncio.run(agent.ainvoke(inputs))
        check_run(state, model)


def test_middleware_checks_its_budget():
    with pytest.raises(ValueError, match="either budget"):
        DraftCompressionMiddleware(draft=tiny_model("llama"), budget=10, ratio=0.5)


@pytest.mark.slow
def test_agent_with_smollm_answers_from_the_compressed_tool_result(smollm):
    model = ScriptedToolCaller(answerer=ChatDraftCompressed(target=smollm, method="full", max_tokens=24))
    agent = create_agent(
        model,
        tools=[retrieve],
        system_prompt="Answer from the retrieved passages.",
        middleware=[DraftCompressionMiddleware(draft=smollm, ratio=0.25)],
    )
    sent_tool, reply = check_run(agent.invoke({"messages": [HumanMessage(QUESTION)]}), model)
    assert NEEDLE in sent_tool.content and ANSWER in reply.text, reply.text


def test_middleware_fits_the_model_window_and_says_which_budget(caplog):
    """No budget: fit the window (set here, else the model's profile, else ASSUMED_WINDOW, logged once)."""
    from draft_rag.config import ASSUMED_WINDOW

    def run(middleware, model):
        agent = create_agent(model, tools=[retrieve], middleware=[middleware])
        state = agent.invoke({"messages": [HumanMessage(QUESTION)]})
        return model.seen[-1][-1], state["messages"][-1].response_metadata["draft_rag"]

    caplog.set_level("WARNING")
    unknown = DraftCompressionMiddleware(draft=tiny_model("llama"), specpc=CFG)
    for _ in range(2):
        sent, stats = run(unknown, ScriptedToolCaller())
        assert (stats["budget"], stats["context_window"]) == ("auto", ASSUMED_WINDOW) and sent.content == CONTEXT
        assert "ASSUMED_WINDOW" in stats["budget_reason"]
    assert sum("ASSUMED_WINDOW" in r.getMessage() for r in caplog.records) == 1
    for middleware, model, window in (
        (DraftCompressionMiddleware(draft=tiny_model("llama"), specpc=CFG, budget="auto", context_window=400),
         ScriptedToolCaller(), 400),
        (DraftCompressionMiddleware(draft=tiny_model("llama"), specpc=CFG),
         ScriptedToolCaller(profile={"max_input_tokens": 500}), 500),
    ):  # fmt: skip
        sent, stats = run(middleware, model)
        assert stats["context_window"] == window and stats["compressed_tokens"] <= window < stats["original_tokens"]
        assert len(sent.content) < len(CONTEXT)
    with pytest.raises(ValueError, match="context_window"):
        DraftCompressionMiddleware(draft=tiny_model("llama"), context_window=0)
