"""DraftCompressedLLM through LlamaIndex's own LLM entry points, query engines and callbacks."""

from __future__ import annotations

import asyncio
import copy

import pytest

pytest.importorskip("llama_index.core")

from conftest import needle_prompt, tiny_model  # noqa: E402
from llama_index.core import ChatPromptTemplate, PromptTemplate  # noqa: E402
from llama_index.core.base.llms.types import ChatMessage, MessageRole  # noqa: E402
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler  # noqa: E402
from llama_index.core.llms import LLM, MockLLM  # noqa: E402
from llama_index.core.llms.mock import MockLLMWithChatMemoryOfLastCall  # noqa: E402
from llama_index.core.types import BaseOutputParser  # noqa: E402

from draft_rag import DraftEngine, SpecPCConfig  # noqa: E402
from draft_rag.engine import METHODS  # noqa: E402
from draft_rag.models import LoadedModel  # noqa: E402
from llama_index.llms.draft_rag import DraftCompressedLLM  # noqa: E402
from llama_index.llms.draft_rag.templates import render_messages, render_prompt  # noqa: E402

TINY_SPECPC = SpecPCConfig(starting_layer_index=0, window_size=8, kernel_size=5, neighbor_tokens=4)
TEMPLATE = PromptTemplate("Read the notes below.\n---\n{context_str}\n---\nQuestion: {query_str}\nAnswer:")
CONTEXT, QUESTION, ANSWER = needle_prompt(8)
PARAGRAPHS = CONTEXT.replace(". ", ".\n\n")
LONG = needle_prompt(24)[0]  # long enough to hold retrieved context (draft_rag.messages.LONG_CHARS)


def tiny_llm(method="full", **kwargs) -> DraftCompressedLLM:
    return DraftCompressedLLM(target=tiny_model("llama"), method=method, max_new_tokens=6, specpc=TINY_SPECPC, **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({}, ValueError, "exactly one of target"),
        ({"target": "T", "llm": MockLLM()}, ValueError, "exactly one of target"),
        ({"llm": "not an llm"}, TypeError, "LlamaIndex LLM"),
        ({"llm": MockLLM(), "method": "speckv"}, ValueError, "method must be one of"),
        ({"llm": MockLLM(), "method": "nope"}, ValueError, "method must be one of"),
        ({"llm": MockLLM(), "budget": 10, "ratio": 0.5}, ValueError, "budget"),
        ({"llm": MockLLM(), "budget": 0}, ValueError, "budget"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        DraftCompressedLLM(draft=tiny_model("llama"), **kwargs)


def test_metadata_and_bad_call_arguments():
    llm = tiny_llm()
    meta = llm.metadata
    assert (meta.context_window, meta.num_output, meta.is_chat_model) == (4096, 6, True)  # it has a chat template
    assert "tiny-llama" in meta.model_name and "full" in meta.model_name
    with pytest.raises(TypeError, match="unsupported generation arguments"):
        llm.complete("hi", max_tokens=3)
    with pytest.raises(ValueError, match="messages must not be empty"):
        llm.chat([])


def test_complete_stream_and_chat_agree(draft_events):
    llm = tiny_llm(method="specpc", budget=40)
    prompt = CONTEXT + "\n" + QUESTION
    full = llm.complete(prompt)
    stats = full.additional_kwargs["draft_rag"]
    assert stats["method"] == "specpc" and stats["new_tokens"] == 6
    assert full.raw["usage"]["prompt_tokens"] == stats["prompt_tokens"] < stats["original_tokens"]
    assert full.raw["compressed"]["compressed_tokens"] < full.raw["compressed"]["original_tokens"]
    pieces = list(llm.stream_complete(prompt))
    assert "".join(p.delta for p in pieces) == pieces[-1].text == full.text
    assert pieces[-1].additional_kwargs["draft_rag"]["prompt_tokens"] == stats["prompt_tokens"]
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
        ChatMessage(role=MessageRole.USER, content=LONG + "\n\n" + QUESTION),
    ]
    chat = llm.chat(messages)  # the conversation, in the chat template; the context compressed
    direct = llm.engine.generate(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": LONG + "\n\n" + QUESTION}],
        budget=40,
        max_new_tokens=6,
    )
    assert chat.message.role == MessageRole.ASSISTANT and chat.message.content == direct.text
    assert chat.raw["usage"]["prompt_tokens"] == direct.stats.prompt_tokens < direct.stats.original_tokens
    streamed = list(llm.stream_chat(messages))
    assert "".join(r.delta for r in streamed) == chat.message.content
    assert streamed[-1].additional_kwargs["draft_rag"]["prompt_tokens"] == direct.stats.prompt_tokens
    assert len(draft_events) == 4 and {e.component for e in draft_events} == {"llm"}
    assert draft_events[0].compressed_tokens == stats["prompt_tokens"]


@pytest.mark.parametrize("method", [m for m in ("full", "specpc", "speckv", "speckv-pc") if m in METHODS])
def test_methods_run_through_the_engine(method, draft_events):
    out = tiny_llm(method, budget=40, pc_budget=60 if method == "speckv-pc" else None).complete(
        CONTEXT + "\n" + QUESTION
    )
    stats = out.additional_kwargs["draft_rag"]
    assert stats["method"] == method and out.raw["usage"]["completion_tokens"] == 6
    (event,) = draft_events
    assert (event.method, event.kv_bytes, event.kv_bytes_full) == (method, stats["kv_bytes"], stats["kv_bytes_full"])
    if method.startswith("speckv"):
        assert 0 < stats["kv_bytes"] < stats["kv_bytes_full"]


def test_budget_larger_than_the_prompt_passes_it_through():
    out = tiny_llm("specpc", budget=100_000).complete(CONTEXT + "\n" + QUESTION)
    stats = out.additional_kwargs["draft_rag"]
    assert stats["prompt_tokens"] == stats["original_tokens"] and stats["seconds"]["draft"] == 0.0


def test_predict_protects_the_template_and_counts_tokens():
    counter = TokenCountingHandler()
    llm = tiny_llm("specpc", budget=200, callback_manager=CallbackManager([counter]), system_prompt="Be brief.")
    llm.predict(TEMPLATE, context_str=PARAGRAPHS, query_str=QUESTION)  # a chat model: system + user message
    (event,) = counter.llm_token_counts
    assert event.prompt_token_count < len(tiny_model("llama").tokenizer(event.prompt)["input_ids"])
    engine = DraftEngine(tiny_model("llama"), specpc=TINY_SPECPC)  # the same call straight to the engine
    user = TEMPLATE.format(context_str=PARAGRAPHS, query_str=QUESTION)
    direct = engine.generate(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": user}],
        context=[PARAGRAPHS],
        budget=200,
        max_new_tokens=6,
    )  # the template's context only
    assert event.prompt_token_count == direct.stats.prompt_tokens
    assert event.completion == f"assistant: {direct.text}"  # a chat event: the message, with its role
    assert "".join(llm.stream(TEMPLATE, context_str=PARAGRAPHS, query_str=QUESTION)) == direct.text


def test_predict_on_a_completion_model_protects_the_template(draft_events):
    tiny = tiny_model("llama")
    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.chat_template = None  # no chat template: LlamaIndex's completion path (complete, not chat)
    target = LoadedModel(tiny.model, tokenizer, "tiny-raw")
    llm = DraftCompressedLLM(target=target, budget=200, max_new_tokens=6, specpc=TINY_SPECPC, system_prompt="Be brief.")
    assert llm.metadata.is_chat_model is False
    out = llm.predict(TEMPLATE, context_str=PARAGRAPHS, query_str=QUESTION)
    direct = DraftEngine(target, specpc=TINY_SPECPC).generate(
        instruction="Be brief.\n\nRead the notes below.\n---",  # the system prompt, then the template to the context
        chunks=PARAGRAPHS.split("\n\n"),
        question=f"---\nQuestion: {QUESTION}\nAnswer:",
        budget=200,
        max_new_tokens=6,
    )
    (event,) = draft_events
    assert out == direct.text and (event.original_tokens, event.compressed_tokens) == (
        direct.stats.original_tokens,
        direct.stats.prompt_tokens,
    )
    assert "".join(llm.stream(TEMPLATE, context_str=PARAGRAPHS, query_str=QUESTION)) == out


class _FormatInstructions(BaseOutputParser):
    """An output parser that adds instructions to the prompt (LlamaIndex applies them while rendering)."""

    def parse(self, output: str) -> str:
        return output

    def format(self, query: str) -> str:
        return query + "\nAnswer in one line."


CHAT_TEMPLATE = ChatPromptTemplate(
    [
        ChatMessage(role=MessageRole.SYSTEM, content="Notes:\n{context_str}"),
        ChatMessage(role=MessageRole.USER, content="{query_str}"),
    ]
)


@pytest.mark.parametrize("template", [TEMPLATE, CHAT_TEMPLATE], ids=["prompt", "chat-prompt"])
@pytest.mark.parametrize("is_chat_model", [False, True], ids=["completion", "chat"])
def test_contract_templates_render_as_llamaindex_predict_does(template, is_chat_model):
    """Contract with LlamaIndex: ``templates`` rebuilds from public API what ``LLM.predict`` renders privately.

    DraftCompressedLLM renders templates itself (to find the retrieved context); this fails if LlamaIndex's own
    rendering (system prompt, query wrapper, output parser instructions, chat/completion form) changes.
    """
    llm = MockLLMWithChatMemoryOfLastCall(is_chat_model=is_chat_model, system_prompt="Be brief.")
    llm.output_parser = _FormatInstructions()
    llm.query_wrapper_prompt = PromptTemplate("[INST] {query_str} [/INST]")
    args = {"context_str": PARAGRAPHS, "query_str": QUESTION}
    sent = LLM.predict(llm, template, **args)  # MockLLM answers with the prompt it completes
    if is_chat_model:
        assert llm.last_chat_messages == render_messages(llm, template, **args)
    else:
        assert llm.last_chat_messages is None and sent == render_prompt(llm, template, **args)
    private = ("_get_prompt", "_get_messages", "_extend_prompt", "_extend_messages", "_parse_output")
    assert not set(private) & set(vars(DraftCompressedLLM))  # no LlamaIndex internals overridden


def test_wrapping_another_llm_compresses_only_the_context(draft_events):
    inner = MockLLM()  # LlamaIndex's echo LLM: its answer is the prompt it received
    llm = DraftCompressedLLM(llm=inner, draft=tiny_model("llama"), budget=200, specpc=TINY_SPECPC)
    assert llm.metadata.is_chat_model is False and "specpc" in llm.metadata.model_name
    sent = llm.predict(TEMPLATE, context_str=PARAGRAPHS, query_str=QUESTION)
    assert sent.startswith("Read the notes below.\n---\n") and sent.endswith(f"\n---\nQuestion: {QUESTION}\nAnswer:")
    assert len(sent) < len(TEMPLATE.format(context_str=PARAGRAPHS, query_str=QUESTION))
    (ev,) = draft_events
    assert ev.compressed_tokens < ev.original_tokens
    direct = llm.complete(CONTEXT + QUESTION)
    assert (
        direct.additional_kwargs["draft_rag"]["compressed_tokens"]
        < direct.additional_kwargs["draft_rag"]["original_tokens"]
    )
    assert len(direct.text) < len(CONTEXT + QUESTION)
    chat = llm.chat(
        [
            ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
            ChatMessage(role=MessageRole.USER, content=LONG + "\n\n" + QUESTION),
        ]
    )
    assert "Be brief." in chat.message.content and len(chat.message.content) < len(LONG)
    assert chat.message.content.endswith(f"\n\n{QUESTION}\nassistant: ")  # MockLLM echoes what it received


def test_wrapping_with_method_full_sends_prompts_as_they_are(draft_events):
    """With llm=..., the remote methods are the same as in LangChain and the server: specpc, or full (no draft)."""
    llm = DraftCompressedLLM(llm=MockLLM(), draft=tiny_model("llama"), method="full", specpc=TINY_SPECPC)
    assert llm.predict(TEMPLATE, context_str=PARAGRAPHS, query_str=QUESTION) == TEMPLATE.format(
        context_str=PARAGRAPHS, query_str=QUESTION
    )
    direct = llm.complete(CONTEXT + QUESTION)
    assert direct.text == CONTEXT + QUESTION and direct.additional_kwargs["draft_rag"] == {
        "method": "full",
        "budget_reason": "method='full': the prompt is sent whole",
    }
    messages = [ChatMessage(role=MessageRole.USER, content=LONG + "\n\n" + QUESTION)]
    assert LONG in llm.chat(messages).message.content
    assert draft_events == []  # the draft never ran


async def test_async_paths_do_not_block_the_event_loop():
    llm = DraftCompressedLLM(target=tiny_model("llama"), method="full", max_new_tokens=48, specpc=TINY_SPECPC)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    prompt = CONTEXT + QUESTION
    out = await llm.acomplete(prompt)
    task.cancel()
    assert ticks >= 3, "the event loop was blocked while the model ran"
    pieces = [r async for r in await llm.astream_complete(prompt)]
    assert "".join(p.delta for p in pieces) == out.text
    chat = await llm.achat([ChatMessage(role=MessageRole.USER, content=prompt)])
    assert chat.message.content == out.text
    deltas = [r.delta async for r in await llm.astream_chat([ChatMessage(role=MessageRole.USER, content=prompt)])]
    assert "".join(deltas) == out.text
    assert await llm.apredict(TEMPLATE, context_str=PARAGRAPHS, query_str=QUESTION) == llm.predict(
        TEMPLATE, context_str=PARAGRAPHS, query_str=QUESTION
    )
    async for first in await llm.astream_complete(prompt):  # noqa: B007
        break  # abandoned stream: the engine must be usable again
    assert first.delta and (await asyncio.wait_for(llm.acomplete(prompt), 120)).text == out.text
    for first in llm.stream_complete(prompt):  # noqa: B007
        break
    assert llm.complete(prompt).text == out.text


async def test_async_wrapping_another_llm():
    llm = DraftCompressedLLM(llm=MockLLM(), draft=tiny_model("llama"), budget=200, specpc=TINY_SPECPC)
    sent = await llm.apredict(TEMPLATE, context_str=PARAGRAPHS, query_str=QUESTION)
    assert sent == llm.predict(TEMPLATE, context_str=PARAGRAPHS, query_str=QUESTION)
    out = await llm.acomplete(CONTEXT + QUESTION)
    assert out.additional_kwargs["draft_rag"]["method"] == "specpc"


@pytest.mark.slow
def test_real_draft_keeps_the_needle_and_the_template(smollm):
    text, question, answer = needle_prompt(40, position=0.4)
    qa = PromptTemplate(
        "Context information is below.\n---\n{context_str}\n---\nAnswer the query.\nQuery: {query_str}\nAnswer: "
    )
    sent = DraftCompressedLLM(llm=MockLLM(), draft=smollm, budget=320).predict(qa, context_str=text, query_str=question)
    assert answer in sent and len(sent) < len(text) / 2
    assert sent.startswith("Context information is below.\n---\n")
    assert sent.endswith(f"\n---\nAnswer the query.\nQuery: {question}\nAnswer: ")


@pytest.mark.parametrize("mode", ["context", "condense_plus_context"])
def test_chat_engines_compress_the_retrieved_context(mode, draft_events):
    from llama_index.core import Document, MockEmbedding, VectorStoreIndex

    index = VectorStoreIndex.from_documents([Document(text=LONG)], embed_model=MockEmbedding(embed_dim=8))
    llm = tiny_llm("specpc", ratio=0.25)
    chat_engine = index.as_chat_engine(chat_mode=mode, llm=llm)
    chat_engine.chat("Hello?")  # a first turn, then a follow-up over the same context
    chat_engine.chat(QUESTION)
    assert len(draft_events) >= 2
    for event in draft_events:
        assert event.compressed_tokens < 0.6 * event.original_tokens
