"""ChatDraftCompressed: a LangChain chat model that compresses long prompts with a draft model (docs/langchain.md).

Local target (``target=...``: generates through ``DraftEngine``, real token streaming) or wrapped (``llm=<any
BaseChatModel>``: SpecPC compresses the retrieved context inside the messages, by ``draft_rag.messages``'s rule,
and the shorter conversation goes to the wrapped model).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableBinding
from pydantic import model_validator

from draft_rag.adapters import front_messages

from . import _common as common
from ._messages import rebuild, to_dicts


class ChatDraftCompressed(common.DraftSettings, BaseChatModel):
    """Chat model with draft-guided prompt compression: SpecPC in front of any chat model, or a local target.

    Setup:
        From a clone of draft-rag: ``bash scripts/setup.sh`` (installs this package, editable, and the built-in
        models). The draft defaults to the built-in SmolLM2-135M-Instruct; nothing is downloaded at run time.

    Key init args (each field's description says more; docs/langchain.md has the whole page):
        llm (any LangChain chat model, the compressed conversation is sent to it) or target (a local model that
        answers; also as ``model=``); draft, method, budget / ratio, context_window. Decoding (max_tokens,
        temperature, top_p, top_k, seed) is forwarded to ``llm`` only when set (at construction or per call);
        ``stop`` always; timeout, max_retries, api_key: LangChain's standard parameters (set them on ``llm``).

    Instantiate:
        .. code-block:: python

            from langchain_openai import ChatOpenAI
            from langchain_draft_rag import ChatDraftCompressed

            remote = ChatOpenAI(model="meta-llama/Llama-3.1-8B-Instruct", base_url="http://localhost:8000/v1")
            chat = ChatDraftCompressed(llm=remote, context_window=128_000)  # or ratio=0.25
            local = ChatDraftCompressed(target="smollm2-135m-instruct", ratio=0.25, max_tokens=64)

    Invoke / stream / async:
        .. code-block:: python

            messages = [("system", "Answer from the context."), ("human", f"Context:\n{docs}\n\nQuestion: {q}")]
            reply = chat.invoke(messages)
            reply.response_metadata["draft_rag"]  # tokens before/after, seconds, budget and budget_reason
            for chunk in chat.stream(messages):  # the first chunk (wrapped) or the last (local) carries the stats
                print(chunk.content, end="")
            reply = await chat.ainvoke(messages)

    What is compressed: the retrieved context inside the messages, wherever the template put it (system prompt,
    a ``Context:`` part, a tool result); instructions, the question and the chat structure are kept word for word
    (``draft_rag.messages``). Tool calling: with ``llm``, ``bind_tools`` binds on the wrapped model.
    """

    model_config = common.CONFIG

    @model_validator(mode="after")
    def _setup(self) -> ChatDraftCompressed:
        self._check_settings(BaseChatModel, "LangChain chat model", "LangChain BaseChatModel")
        return self

    @property
    def _llm_type(self) -> str:
        return "draft-rag-chat"

    def _options(self, stop, kwargs: dict, run_manager):
        model = kwargs.get("model")
        if model is not None and model != self.model_name:
            raise ValueError(f"per-call model={model!r} is not supported; this instance runs {self.model_name!r}")
        return self._call(stop, kwargs, run_manager, also_known=("model",))

    # -- local target --------------------------------------------------------------------------
    def _stream_local(self, messages, options, run_manager) -> Iterator[ChatGenerationChunk]:
        chunk = lambda piece: ChatGenerationChunk(message=AIMessageChunk(content=piece))  # noqa: E731
        return self._local(options, run_manager, chunk, self._local_final, messages=to_dicts(messages))

    def _local_final(self, text: str, reply) -> ChatGenerationChunk:
        st = reply.stats
        stats = st.to_dict()
        compression = stats.pop("compression")
        kept = ("messages", "warning", "draft_original_tokens", "draft_kept_tokens")
        stats.update({k: compression[k] for k in kept if k in compression})
        tokens = {"input_tokens": st.prompt_tokens, "output_tokens": st.new_tokens}
        msg = AIMessageChunk(
            content=text,
            usage_metadata={**tokens, "total_tokens": st.prompt_tokens + st.new_tokens},
            chunk_position="last",
            response_metadata={"model_name": self.model_name, "finish_reason": st.finish_reason, "draft_rag": stats},
        )
        return ChatGenerationChunk(message=msg, generation_info={"finish_reason": st.finish_reason})

    # -- wrapped chat model --------------------------------------------------------------------
    def _compress(self, messages: list[BaseMessage], options) -> tuple[list[BaseMessage], dict]:
        """SpecPC on the retrieved context inside ``messages`` (``draft_rag.adapters.front_messages``)."""
        compressed, stats = common.front(self, self.llm, front_messages, options, to_dicts(messages))
        return rebuild(messages, compressed), stats

    def _stream_wrapped(self, messages, options, wrapped: dict, run_manager) -> Iterator[ChatGenerationChunk]:
        new, stats = self._compress(messages, options)
        for chunk in self.llm.stream(new, **wrapped):
            yield common.emit(_with_stats(chunk, stats, self.model_name, AIMessageChunk), run_manager)
            stats = None  # the first chunk carries them

    async def _astream_wrapped(self, messages, options, wrapped: dict, run_manager) -> AsyncIterator:
        new, stats = await asyncio.to_thread(self._compress, messages, options)
        async for chunk in self.llm.astream(new, **wrapped):
            out = _with_stats(chunk, stats, self.model_name, AIMessageChunk)
            if run_manager:
                await run_manager.on_llm_new_token(out.text, chunk=out)
            yield out
            stats = None

    def bind_tools(self, tools, **kwargs: Any):
        """The wrapped model binds (formats) the tools; tool calls and results pass uncompressed (not locally)."""
        if self.llm is None:
            raise NotImplementedError("tool calling needs a wrapped chat model (llm=...); a local target has none")
        bound = self.llm.bind_tools(tools, **kwargs)
        if not isinstance(bound, RunnableBinding):
            raise TypeError(f"{type(self.llm).__name__}.bind_tools returned {type(bound).__name__}, not a binding")
        return self.bind(**bound.kwargs)

    # -- LangChain entry points ----------------------------------------------------------------
    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        options, wrapped = self._options(stop, kwargs, run_manager)
        if self.llm is None:
            return generate_from_stream(self._stream_local(messages, options, run_manager))
        new, stats = self._compress(messages, options)
        return _result(_with_stats(self.llm.invoke(new, **wrapped), stats, self.model_name, AIMessage))

    async def _agenerate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        options, wrapped = self._options(stop, kwargs, run_manager)
        if self.llm is None:
            local = common.astream_in_thread(lambda: self._stream_local(messages, options, None), run_manager)
            return await agenerate_from_stream(local)
        new, stats = await asyncio.to_thread(self._compress, messages, options)
        return _result(_with_stats(await self.llm.ainvoke(new, **wrapped), stats, self.model_name, AIMessage))

    def _stream(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs: Any) -> Iterator:
        options, wrapped = self._options(stop, kwargs, run_manager)
        if self.llm is not None:
            yield from self._stream_wrapped(messages, options, wrapped, run_manager)
        else:
            yield from self._stream_local(messages, options, run_manager)

    async def _astream(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs: Any) -> AsyncIterator:
        options, wrapped = self._options(stop, kwargs, run_manager)
        if self.llm is not None:
            stream = self._astream_wrapped(messages, options, wrapped, run_manager)
        else:  # the local stream runs in one worker thread; the event loop only receives its chunks
            stream = common.astream_in_thread(lambda: self._stream_local(messages, options, None), run_manager)
        async for chunk in stream:
            yield chunk


def _with_stats(message: BaseMessage, stats: dict | None, model_name: str, kind: type):
    """The wrapped model's reply (or chunk) as a ``kind`` message; ``stats`` (if any) in its response metadata."""
    if not isinstance(message, kind):
        message = kind(content=message.content)
    if stats is not None:
        meta = {**message.response_metadata, "draft_rag": stats}
        meta.setdefault("model_name", model_name)
        message = message.model_copy(update={"response_metadata": meta})
    return ChatGenerationChunk(message=message) if kind is AIMessageChunk else message


def _result(message: AIMessage) -> ChatResult:
    return ChatResult(generations=[ChatGeneration(message=message)])
