"""No silent defaults: with no budget and a wrapped model whose window is unknown, every adapter fits the prompt to
``ASSUMED_WINDOW`` (32768 tokens), says so once in a warning and in every response's stats; ``budget="auto"`` works
on every path. Clients run against a live ``draft-rag serve`` (local mode, the tiny Llama) on loopback."""

from __future__ import annotations

import asyncio
import logging

import pytest
from conftest import serving, tiny_model, tiny_tokenizer
from conftest import serving_engine as tiny_engine

from draft_rag import SpecPCConfig
from draft_rag.config import ASSUMED_WINDOW
from draft_rag.server import ServeConfig, create_app

pytest.importorskip("uvicorn")
CFG = SpecPCConfig(starting_layer_index=1, window_size=8, kernel_size=8, neighbor_tokens=8)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
CONTEXT = "\n\n".join([FILLER * 3] * 11 + ["The special magic number for ocean is 4728163."] + [FILLER * 3] * 4)
QUESTION = "What is the special magic number for ocean?"
PROMPT = f"Context:\n{CONTEXT}\n\nQuestion: {QUESTION}\nAnswer:"
FULL = {"draft_rag": {"method": "full"}}  # the server reads what arrives whole, so its usage counts what was sent


def draft_tokens(text: str) -> int:
    return len(tiny_tokenizer()(text, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def server():
    with serving(create_app(tiny_engine(), ServeConfig(max_tokens=8))) as (url, _):
        yield url + "/v1"


def assumed_warnings(caplog) -> list:
    return [r for r in caplog.records if r.levelno == logging.WARNING and "ASSUMED_WINDOW" in r.getMessage()]


def test_context_is_between_the_old_default_and_min_tokens():
    """The prompt the tests send: longer than the 1,024 draft tokens it used to be cut to, and short enough
    (context <= SpecPCConfig.min_tokens) that budget="auto" in front of a remote model leaves it whole."""
    assert 1024 < draft_tokens(CONTEXT) <= SpecPCConfig().min_tokens


def test_chat_openai_unknown_model_gets_the_prompt_whole_and_a_warning_once(server, caplog):
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    from langchain_draft_rag import ChatDraftCompressed

    remote = ChatOpenAI(model="some-unknown-model", base_url=server, api_key="k", max_tokens=4, extra_body=FULL)
    assert not (remote.profile or {}).get("max_input_tokens")  # nothing says how long its window is
    messages = [SystemMessage("Answer from the context."), HumanMessage(PROMPT)]
    direct = remote.invoke(messages).usage_metadata["input_tokens"]
    wrapped = ChatDraftCompressed(llm=remote, draft=tiny_model("llama"), specpc=CFG)
    caplog.set_level(logging.WARNING)
    replies = [wrapped.invoke(messages), asyncio.run(wrapped.ainvoke(messages))]
    assert len(assumed_warnings(caplog)) == 1  # once per instance
    for reply in replies:
        assert reply.usage_metadata["input_tokens"] == direct  # the server read the whole prompt
        stats = reply.response_metadata["draft_rag"]
        assert (stats["budget"], stats["context_window"]) == ("auto", ASSUMED_WINDOW)
        assert "ASSUMED_WINDOW" in stats["budget_reason"] and "context_window=" in stats["budget_reason"]
    chunks = list(wrapped.stream(messages))
    assert chunks[0].response_metadata["draft_rag"]["context_window"] == ASSUMED_WINDOW


def test_chat_openai_with_a_window_or_a_budget_says_which(server, caplog):
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    from langchain_draft_rag import ChatDraftCompressed

    remote = ChatOpenAI(model="some-unknown-model", base_url=server, api_key="k", max_tokens=4, extra_body=FULL)
    caplog.set_level(logging.WARNING)
    fitted = ChatDraftCompressed(llm=remote, draft=tiny_model("llama"), specpc=CFG, context_window=600)
    stats = fitted.invoke([HumanMessage(PROMPT)]).response_metadata["draft_rag"]
    assert stats["context_window"] == 600 and stats["compressed_tokens"] <= 600
    assert "context_window set here" in stats["budget_reason"]
    fixed = ChatDraftCompressed(llm=remote, draft=tiny_model("llama"), specpc=CFG, budget=300)
    stats = fixed.invoke([HumanMessage(PROMPT)]).response_metadata["draft_rag"]
    assert stats["budget"] == 300 and "context_window" not in stats and stats["budget_reason"].startswith("budget=300")
    assert not assumed_warnings(caplog)  # neither assumed a window


def test_openai_completion_llm_unknown_model(server, caplog):
    from langchain_openai import OpenAI

    from langchain_draft_rag import DraftCompressedLLM

    remote = OpenAI(model="some-unknown-model", base_url=server, api_key="k", max_tokens=4, extra_body=FULL)
    caplog.set_level(logging.WARNING)
    wrapped = DraftCompressedLLM(llm=remote, draft=tiny_model("llama"), specpc=CFG)
    for result in (wrapped.generate([PROMPT]), asyncio.run(wrapped.agenerate([PROMPT]))):
        stats = result.generations[0][0].generation_info["draft_rag"]
        assert stats["compressed_tokens"] == stats["original_tokens"] and "min_tokens" in stats["left_whole"]
        assert stats["context_window"] == ASSUMED_WINDOW and "ASSUMED_WINDOW" in stats["budget_reason"]
    assert len(assumed_warnings(caplog)) == 1
    auto = DraftCompressedLLM(llm=remote, draft=tiny_model("llama"), specpc=CFG, budget="auto", context_window=500)
    stats = auto.generate([PROMPT]).generations[0][0].generation_info["draft_rag"]
    assert stats["budget"] == "auto" and stats["compressed_tokens"] <= 500


def test_llamaindex_openai_like_chat_and_complete_fit_the_same_window(server):
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    from llama_index.llms.draft_rag import DraftCompressedLLM

    remote = OpenAILike(
        model="some-unknown-model", api_base=server, api_key="k", is_chat_model=True, context_window=700, max_tokens=8
    )
    llm = DraftCompressedLLM(llm=remote, draft=tiny_model("llama"), specpc=CFG)
    messages = [ChatMessage(role="user", content=PROMPT)]
    replies = {
        "chat": llm.chat(messages),
        "achat": asyncio.run(llm.achat(messages)),
        "stream_chat": list(llm.stream_chat(messages))[-1],
        "complete": llm.complete(PROMPT),
        "acomplete": asyncio.run(llm.acomplete(PROMPT)),
        "stream_complete": list(llm.stream_complete(PROMPT))[-1],
    }
    for path, reply in replies.items():
        stats = reply.additional_kwargs["draft_rag"]
        assert stats["context_window"] == 700 - 8, path  # the window minus num_output, on every path
        assert stats["original_tokens"] > 700 and stats["compressed_tokens"] <= 692, path
        assert "num_output" in stats["budget_reason"], path


def test_llamaindex_default_window_is_named(caplog):
    from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
    from llama_index.core.llms import MockLLM

    from llama_index.llms.draft_rag import DraftCompressedLLM

    caplog.set_level(logging.WARNING)
    llm = DraftCompressedLLM(llm=MockLLM(), draft=tiny_model("llama"), specpc=CFG)
    for _ in range(2):
        stats = llm.complete(PROMPT).additional_kwargs["draft_rag"]
    assert stats["context_window"] == DEFAULT_CONTEXT_WINDOW and "LlamaIndex's default" in stats["budget_reason"]
    assert len([r for r in caplog.records if "LlamaIndex's default context_window" in r.getMessage()]) == 1


def test_local_target_stats_say_which_budget():
    from langchain_core.messages import HumanMessage

    from langchain_draft_rag import ChatDraftCompressed

    msgs = [HumanMessage(PROMPT)]
    base = {"target": tiny_model("llama"), "specpc": CFG, "max_tokens": 2}
    reasons = {
        kw.get("method", "specpc") + str(kw.get("budget")): ChatDraftCompressed(**base, **kw)
        .invoke(msgs)
        .response_metadata["draft_rag"]["budget_reason"]
        for kw in ({}, {"budget": 64}, {"method": "speckv", "budget": 64}, {"method": "speckv"}, {"method": "full"})
    }
    assert reasons == {
        "specpcNone": "prompt: no budget given: fit the target's 4096-token window",
        "specpc64": "prompt: budget=64 (given)",
        "speckv64": "KV: budget=64 (given) entries per layer and KV head",
        "speckvNone": "KV: budget=1024 (the default) entries per layer and KV head",
        "fullNone": "method='full': the prompt is read whole",
    }
