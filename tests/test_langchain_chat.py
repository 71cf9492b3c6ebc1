"""ChatDraftCompressed and DraftCompressedLLM on a tiny random-weight model: same results as the engine,
streaming, callbacks, async, decoding options, the wrapped mode and bad input."""

from __future__ import annotations

import asyncio
import threading

import pytest
from conftest import needle_prompt, tiny_model
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from draft_rag import SpecPCConfig
from draft_rag.engine import shared_engine
from langchain_draft_rag import ChatDraftCompressed, DraftCompressedLLM
from langchain_draft_rag._messages import to_dicts

CFG = SpecPCConfig(starting_layer_index=1, window_size=8, kernel_size=8, neighbor_tokens=8, granularity="token")
CONTEXT, QUESTION, _ = needle_prompt(30)  # one long paragraph: all retrieved context
SYSTEM = "Answer from the context only."


def tiny():
    return tiny_model("llama")


def chat(**kw):
    return ChatDraftCompressed(**{"target": tiny(), "specpc": CFG, "budget": 96, "max_tokens": 6, **kw})


def rag_messages():
    return [
        SystemMessage(SYSTEM),
        HumanMessage(CONTEXT, id="ctx-1", additional_kwargs={"source": "doc"}),
        HumanMessage(QUESTION),
    ]


class Recorder(BaseChatModel):
    """A real (if simple) downstream chat model: records what it receives, answers with a summary of it."""

    calls: list = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "recorder"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.calls.append({"messages": messages, "stop": stop, "kwargs": kwargs})
        n = sum(len(m.text) for m in messages)
        msg = AIMessage(
            f"{len(messages)} messages, {n} characters",
            usage_metadata={"input_tokens": n, "output_tokens": 3, "total_tokens": n + 3},
        )
        return ChatResult(generations=[ChatGeneration(message=msg)])


class ToolRecorder(Recorder):
    """A downstream model with tool calling: formats tools like OpenAI and calls the first one."""

    def bind_tools(self, tools, **kwargs):
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.calls.append({"messages": messages, "stop": stop, "kwargs": kwargs})
        name = kwargs["tools"][0]["function"]["name"]
        msg = AIMessage("", tool_calls=[{"name": name, "args": {"a": 1, "b": 2}, "id": "call-1"}])
        return ChatResult(generations=[ChatGeneration(message=msg)])


class Tokens(BaseCallbackHandler):
    def __init__(self):
        self.tokens, self.starts, self.ends = [], 0, 0

    def on_llm_new_token(self, token, **kwargs):
        self.tokens.append(token)

    def on_chat_model_start(self, *args, **kwargs):
        self.starts += 1

    def on_llm_end(self, *args, **kwargs):
        self.ends += 1


# -- local target ---------------------------------------------------------------------------------
def test_local_invoke_is_the_engine_result_with_stats():
    model = chat()
    msg = model.invoke(rag_messages())
    g = shared_engine(tiny(), None, CFG).generate(messages=to_dicts(rag_messages()), budget=96, max_new_tokens=6)
    assert msg.content == g.text and msg.content
    stats = msg.response_metadata["draft_rag"]
    assert stats["method"] == "specpc" and stats["prompt_tokens"] < stats["original_tokens"]
    assert stats["draft_kept_tokens"] == 96 and stats["messages"][0]["message_index"] == 1
    assert msg.usage_metadata == {
        "input_tokens": g.stats.prompt_tokens,
        "output_tokens": g.stats.new_tokens,
        "total_tokens": g.stats.prompt_tokens + g.stats.new_tokens,
    }
    assert msg.response_metadata["model_name"] == "tiny-llama-sdpa"


def test_full_method_does_not_compress():
    msg = chat(method="full").invoke(rag_messages())
    stats = msg.response_metadata["draft_rag"]
    assert stats["method"] == "full" and stats["prompt_tokens"] == stats["original_tokens"]


@pytest.mark.parametrize("method", ["speckv", "speckv-pc"])
def test_kv_methods_pass_through_to_the_engine(method):
    kw = {"pc_budget": 120} if method == "speckv-pc" else {}
    msg = chat(method=method, budget=40, **kw).invoke(rag_messages())
    g = shared_engine(tiny(), None, CFG).generate(
        messages=to_dicts(rag_messages()), method=method, budget=40, max_new_tokens=6, **kw
    )
    assert msg.content == g.text
    assert msg.response_metadata["draft_rag"]["method"] == method


def test_stream_pieces_callbacks_and_last_chunk():
    model = chat()
    handler = Tokens()
    chunks = list(model.stream(rag_messages(), config={"callbacks": [handler]}))
    text = "".join(c.content for c in chunks)
    assert text == model.invoke(rag_messages()).content
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata["output_tokens"] == 6
    assert all(c.usage_metadata is None for c in chunks[:-1])
    assert "".join(handler.tokens) == text and handler.starts == 1 and handler.ends == 1


def test_max_tokens_stop_and_sampling_are_honoured():
    model = chat(max_tokens=12)
    full = model.invoke(rag_messages()).content
    assert model.invoke(rag_messages()).usage_metadata["output_tokens"] == 12
    assert chat(max_tokens=3).invoke(rag_messages()).usage_metadata["output_tokens"] == 3
    stop = full[len(full) // 2 :][:2]
    cut = model.invoke(rag_messages(), stop=[stop])
    assert stop not in cut.content and full.startswith(cut.content) and len(cut.content) < len(full)
    assert cut.response_metadata["finish_reason"] == "stop"
    hot = chat(max_tokens=12, temperature=1.5)
    a, b = hot.invoke(rag_messages(), seed=1).content, hot.invoke(rag_messages(), seed=1).content
    assert a == b
    assert {hot.invoke(rag_messages(), seed=s).content for s in range(2, 6)} != {full}


async def test_async_does_not_block_the_event_loop_and_matches_sync():
    model = chat(max_tokens=64)
    ticks = 0
    done = asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    msg = await model.ainvoke(rag_messages())
    pieces = [c.content async for c in model.astream(rag_messages())]
    done.set()
    await task
    assert ticks > 5  # a blocked loop would tick once or twice
    expected = model.invoke(rag_messages()).content
    assert msg.content == expected == "".join(pieces)
    results = await model.abatch([rag_messages(), "Hello"])
    assert results[0].content == expected and results[1].content


def test_timeout_raises_and_releases_the_engine():
    model = chat(max_tokens=24, timeout=1e-6)
    with pytest.raises(TimeoutError, match="timeout="):
        model.invoke(rag_messages())
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("m", chat().invoke("Hello")))
    t.start()
    t.join(120)
    assert not t.is_alive() and out["m"].content


def test_conversation_roles_and_answer_prefix():
    msgs = [
        SystemMessage("s1"),
        HumanMessage("hello"),
        AIMessage("hi there"),
        ChatMessage(role="critic", content="too short"),
        HumanMessage("how are you?"),
        AIMessage("I am"),
    ]
    msg = chat(method="full").invoke(msgs)
    g = shared_engine(tiny(), None, CFG).generate(messages=to_dicts(msgs), method="full", max_new_tokens=6)
    assert msg.content == g.text
    assert [m["role"] for m in to_dicts(msgs)] == ["system", "user", "assistant", "critic", "user", "assistant"]


# -- wrapped chat model ---------------------------------------------------------------------------
def test_wrapped_compresses_context_keeps_system_question_ids_and_metadata():
    rec = Recorder()
    model = ChatDraftCompressed(llm=rec, draft=tiny(), specpc=CFG, budget=96)
    msg = model.invoke(rag_messages())
    sent = rec.calls[-1]["messages"]
    assert [type(m) for m in sent] == [SystemMessage, HumanMessage, HumanMessage]
    assert sent[0].content == SYSTEM and sent[2].content == QUESTION
    assert sent[1].id == "ctx-1" and sent[1].additional_kwargs == {"source": "doc"}
    cm = shared_engine(None, tiny(), CFG).compress_messages(to_dicts(rag_messages()), budget=96)
    assert sent[1].content == cm.messages[1]["content"] and len(sent[1].content) < len(CONTEXT)
    stats = msg.response_metadata["draft_rag"]
    assert stats["compressed_tokens"] < stats["original_tokens"] and len(stats["messages"]) == 1
    assert msg.content.startswith("3 messages") and msg.usage_metadata["output_tokens"] == 3


def test_wrapped_adaptive_budget_is_the_engines():
    rec = Recorder()
    ChatDraftCompressed(llm=rec, draft=tiny(), specpc=CFG, budget="adaptive").invoke(rag_messages())
    cm = shared_engine(None, tiny(), CFG).compress_messages(to_dicts(rag_messages()), budget="adaptive")
    sent = rec.calls[-1]["messages"]
    assert sent[1].content == cm.messages[1]["content"] and len(sent[1].content) < len(CONTEXT)


def test_wrapped_passes_tools_and_multimodal_through_and_forwards_options():
    rec = Recorder()
    image = HumanMessage(
        content=[{"type": "text", "text": "Here is a picture."}, {"type": "image", "url": "https://example.com/a.png"}]
    )
    tool_call = AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": "c1"}])
    msgs = [image, tool_call, ToolMessage(CONTEXT, tool_call_id="c1"), HumanMessage(CONTEXT), HumanMessage(QUESTION)]
    model = ChatDraftCompressed(llm=rec, draft=tiny(), specpc=CFG, budget=96, max_tokens=7)
    model.invoke(msgs, stop=["x"])
    call = rec.calls[-1]
    assert call["messages"][:2] == msgs[:2] and call["messages"][4] == msgs[4]  # non-text parts, tool calls
    tool = call["messages"][2]  # a tool result is retrieved context: compressed, its id kept
    assert tool.tool_call_id == "c1" and tool.id == msgs[2].id and len(tool.content) < len(CONTEXT)
    assert len(call["messages"][3].content) < len(CONTEXT)
    assert call["stop"] == ["x"] and call["kwargs"] == {"max_tokens": 7}
    model.invoke(msgs, temperature=0.5, top_p=0.9, custom="kept")
    assert rec.calls[-1]["kwargs"] == {"max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "custom": "kept"}
    with pytest.raises(ValueError, match="needs a local target"):
        model.invoke(msgs, method="speckv")


def test_wrapped_full_sends_messages_unchanged_and_streams_async():
    rec = Recorder()
    model = ChatDraftCompressed(llm=rec, draft=tiny(), specpc=CFG, method="full")
    model.invoke(rag_messages())
    assert rec.calls[-1]["messages"] == rag_messages()
    compressing = ChatDraftCompressed(llm=rec, draft=tiny(), specpc=CFG, budget=96)
    chunks = list(compressing.stream(rag_messages()))
    assert len(chunks[0].response_metadata["draft_rag"]["messages"]) == 1
    sync_sent = rec.calls[-1]["messages"]
    msg = asyncio.run(compressing.ainvoke(rag_messages()))
    assert rec.calls[-1]["messages"] == sync_sent and len(msg.response_metadata["draft_rag"]["messages"]) == 1


def test_wrapped_tool_calling_goes_through_the_wrapped_model():
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    rec = ToolRecorder()
    model = ChatDraftCompressed(llm=rec, draft=tiny(), specpc=CFG, budget=96).bind_tools([add], tool_choice="add")
    msg = model.invoke(rag_messages())
    assert msg.tool_calls == [{"name": "add", "args": {"a": 1, "b": 2}, "id": "call-1", "type": "tool_call"}]
    call = rec.calls[-1]
    assert call["kwargs"]["tools"][0]["function"]["name"] == "add" and call["kwargs"]["tool_choice"] == "add"
    assert len(call["messages"][1].content) < len(CONTEXT)  # the context was still compressed
    with pytest.raises(NotImplementedError, match="local target"):
        chat().bind_tools([add])


# -- DraftCompressedLLM ---------------------------------------------------------------------------
def test_llm_local_and_wrapped():
    llm = DraftCompressedLLM(target=tiny(), specpc=CFG, budget=96, max_tokens=6)
    text = llm.invoke(CONTEXT, question=QUESTION)
    g = shared_engine(tiny(), None, CFG).generate(CONTEXT, question=QUESTION, budget=96, max_new_tokens=6)
    assert text == g.text and "".join(llm.stream(CONTEXT, question=QUESTION)) == text
    assert asyncio.run(llm.ainvoke(CONTEXT, question=QUESTION)) == text
    result = llm.generate([CONTEXT])
    info = result.generations[0][0].generation_info
    assert info["draft_rag"]["prompt_tokens"] < info["draft_rag"]["original_tokens"]
    rec = Recorder()
    wrapped = DraftCompressedLLM(llm=rec, draft=tiny(), specpc=CFG, budget=96)
    assert wrapped.invoke(CONTEXT, question=QUESTION).startswith("1 messages")
    sent = rec.calls[-1]["messages"][0].content
    cp = shared_engine(None, tiny(), CFG).compress(CONTEXT, question=QUESTION, budget=96)
    assert sent == cp.text and sent.endswith(QUESTION)


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({}, ValueError, "exactly one of target"),
        ({"target": "x", "llm": Recorder()}, ValueError, "exactly one of target"),
        ({"llm": "gpt"}, TypeError, "BaseChatModel"),
        ({"method": "magic"}, ValueError, "method must be one of"),
        ({"budget": 10, "ratio": 0.5}, ValueError, "either budget"),
        ({"budget": 0}, ValueError, "budget"),
        ({"ratio": 1.5}, ValueError, "ratio"),
        ({"pc_budget": -1}, ValueError, "pc_budget"),
        ({"max_tokens": 0}, ValueError, "max_tokens"),
        ({"template": "xml"}, ValueError, "template"),
        ({"specpc": {"window_size": 8}}, TypeError, "SpecPCConfig"),
        ({"speckv": {"window_size": 8}}, TypeError, "SpecKVConfig"),
        ({"budjet": 10}, ValueError, "budjet"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    if "target" not in kwargs and "llm" not in kwargs and kwargs:
        kwargs = {"target": tiny(), **kwargs}
    with pytest.raises(error, match=match):
        ChatDraftCompressed(**kwargs)


def test_standard_params_accepted_key_hidden_unknown_rejected():
    std = {"api_key": "sk-secret", "timeout": 60, "max_retries": 2, "temperature": 0, "max_tokens": 5, "stop": []}
    local = ChatDraftCompressed(model=tiny(), specpc=CFG, **std)  # model= is LangChain's name for the target
    rec = Recorder()
    wrapped = ChatDraftCompressed(llm=rec, draft=tiny(), specpc=CFG, budget=96, **std)
    for m in (local, wrapped):
        assert m.api_key.get_secret_value() == "sk-secret"
        assert "sk-secret" not in repr(m) + m.model_dump_json(exclude={"target", "llm", "draft"})
        assert "sk-secret" not in str(m._identifying_params) + str(m._get_ls_params())
    assert local._get_ls_params()["ls_model_name"] == local.model_name
    wrapped.invoke("Hello")
    assert not {"api_key", "timeout", "max_retries"} & set(rec.calls[-1]["kwargs"])  # not forwarded
    with pytest.raises(ValueError, match=r"budjet\n  Extra inputs are not permitted"):
        ChatDraftCompressed(target=tiny(), budjet=10)


def test_wrapped_rejects_target_only_methods():
    with pytest.raises(ValueError, match="needs a local target"):
        ChatDraftCompressed(llm=Recorder(), draft=tiny(), method="speckv")


def test_bad_messages_and_call_options():
    model = chat()
    with pytest.raises(ValueError, match=r"messages\[0\] has non-text parts \['image'\]"):
        model.invoke([HumanMessage(content=[{"type": "image", "url": "https://example.com/a.png"}])])
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        model.invoke("Hello", tools=[])
    with pytest.raises(ValueError, match="per-call model"):
        model.invoke("Hello", model="other")
    with pytest.raises(ValueError, match="ratio must be"):
        model.invoke("Hello", ratio=2.0)
    with pytest.raises(ValueError, match="smaller than the protected"):
        chat(budget=2).invoke(rag_messages())
    empty = chat().invoke([HumanMessage(""), HumanMessage("   "), HumanMessage("Hello")])
    assert empty.response_metadata["draft_rag"]["prompt_tokens"] > 0


# -- real SmolLM2 ---------------------------------------------------------------------------------
PREFIX = " Answer: The special magic number for ocean mentioned in the provided text is"


@pytest.mark.slow
def test_smollm_answers_from_the_compressed_context_local_and_wrapped(smollm):
    text, question, answer = needle_prompt(45, position=0.7)
    msgs = [HumanMessage(text), HumanMessage(question), AIMessage(PREFIX)]
    local = ChatDraftCompressed(target=smollm, budget=256, max_tokens=10).invoke(msgs)
    stats = local.response_metadata["draft_rag"]
    assert answer in local.content
    assert local.usage_metadata["input_tokens"] == stats["prompt_tokens"] < 320 < 1000 < stats["original_tokens"]
    inner = ChatDraftCompressed(target=smollm, method="full", max_tokens=10)
    wrapped = ChatDraftCompressed(llm=inner, draft=smollm, budget=256).invoke(msgs)
    outer = wrapped.response_metadata["draft_rag"]
    assert answer in wrapped.content and outer["compressed_tokens"] < 320 < 1000 < outer["original_tokens"]
    assert wrapped.usage_metadata["input_tokens"] < 400  # what the wrapped model really read


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": float("nan")},
        {"temperature": -1.0},
        {"top_p": 5},
        {"top_p": 0},
        {"top_k": -3},
        {"timeout": float("inf")},
        {"max_tokens": True},
        {"lookahead_tokens": -1},
        {"pc_ratio": float("nan")},
    ],
)
def test_sampling_settings_checked_at_construction(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ChatDraftCompressed(target=tiny(), **kwargs)


def test_over_budget_without_context_is_sent_whole_and_says_so():
    short_turns = [HumanMessage("hello there " * 20), AIMessage("hi " * 20), HumanMessage("and now? " * 20)]
    local = chat(budget=20).invoke(short_turns).response_metadata["draft_rag"]
    rec = Recorder()
    wrapped = ChatDraftCompressed(llm=rec, draft=tiny(), specpc=CFG, budget=20).invoke(short_turns)
    assert "no retrieved context" in local["warning"] and rec.calls[-1]["messages"] == short_turns
    assert "no retrieved context" in wrapped.response_metadata["draft_rag"]["warning"]
