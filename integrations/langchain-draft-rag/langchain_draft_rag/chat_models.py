"""ChatDraftCompressed: a LangChain chat model that compresses long prompts with a draft model.

Two modes:

* local target -- ``ChatDraftCompressed(target=..., draft=..., method=...)`` generates with a local HF model
  through ``DraftEngine`` (real token streaming);
* wrapped -- ``ChatDraftCompressed(llm=<any BaseChatModel>, draft=...)`` compresses the context messages
  with SpecPC and sends the shorter conversation to the wrapped model.

The retrieved context inside the messages is compressed wherever the prompt template put it (a system prompt,
a ``Context:`` part of a human message, a tool result); instructions, the question and the chat structure are
kept word for word. The rule is ``draft_rag.messages``'s, shared with the LlamaIndex adapter and the server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableBinding
from pydantic import model_validator

from draft_rag import methods

from . import _common as common
from ._messages import rebuild, to_dicts

logger = logging.getLogger(__name__)

_CALL_OPTIONS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "budget", "ratio", "method")
_DECODING = ("max_tokens", "temperature", "top_p", "top_k", "seed")


class ChatDraftCompressed(common.DraftSettings, BaseChatModel):
    """Chat model with draft-guided prompt compression: SpecPC in front of any chat model, or a local target.

    Setup:
        From a clone of draft-rag: ``bash scripts/setup.sh`` (installs this package, editable, and the built-in
        models). The draft defaults to the built-in SmolLM2-135M-Instruct; nothing is downloaded at run time.

    Key init args — what to run:
        llm: BaseChatModel | None
            Any LangChain chat model; the compressed conversation is sent to it. Give this or ``target``.
        target: str | LoadedModel | None
            A local Hugging Face model that answers (alias, path, .gguf or hub id; also as ``model=``).
        draft: str | LoadedModel | None
            The small model whose attention picks what to keep (default: the target, or SmolLM2 with ``llm``).
        method: str
            "specpc" (default: shortens the prompt), "full" (no compression); with a local target also the KV
            methods ("speckv", "speckv-pc", "snapkv", ...: ``draft_rag.methods.NAMES``).

    Key init args — how much to keep:
        budget: int | "auto" | "adaptive" | None
            "specpc": draft tokens of prompt kept (protected text included); KV methods: KV entries kept per
            layer and KV head. "auto" (also what no budget means for "specpc"): fit the model's window;
            "adaptive": as many as the draft's attention needs, within that window.
        ratio: float | None
            Instead of ``budget``: the fraction of the retrieved context KEPT (0.25 keeps a quarter; kvpress's
            ``compression_ratio`` is the fraction removed). The question and instructions are kept on top.
        context_window: int | None
            With ``llm``: the wrapped model's input window in tokens. Default: its
            ``profile["max_input_tokens"]``, else ``draft_rag.config.ASSUMED_WINDOW`` (32768, logged once).
            A local target's window is read from its config.
        pc_budget / pc_ratio, lookahead_tokens: SpecKV-PC's prompt budget; SpecKV's draft lookahead length.
        sparse_prefill: bool | None
            True: the local target prefills long prompts vertical-slash sparse (``SparsePrefillConfig()``'s
            settings; give ``DraftEngine(sparse_prefill=SparsePrefillConfig(...))`` for others). Local only.

    Key init args — generation:
        max_tokens, temperature, top_p, top_k, seed, stop: decoding. With ``llm`` they are forwarded only when
            set (at construction or per call); ``stop`` always.
        timeout: float | None
            Local target: seconds the whole generation may take; checked after each token, then
            ``TimeoutError`` (a token being computed is not interrupted). With ``llm``: unused, set it there.
        max_retries, api_key: LangChain's standard parameters, accepted and unused (local generation is never
            retried and needs no key); with ``llm``, set them on the wrapped model.
        template: "chat" or "raw" prompt wrapping for the local target (default: chat if it has a template).
        specpc / speckv: ``draft_rag.SpecPCConfig`` / ``SpecKVConfig`` for the other settings (window, kernel).
        target_kwargs / draft_kwargs: ``draft_rag.load_model`` options per model: ``device_map`` ("auto"),
            ``dtype``, ``attn_implementation``, ``device``, ``model_kwargs`` (``quantization_config``, ...).
        context_cache_mb: MiB of the draft's KV kept for contexts read before (0 turns it off).

    Instantiate:
        .. code-block:: python

            from langchain_openai import ChatOpenAI
            from langchain_draft_rag import ChatDraftCompressed

            remote = ChatOpenAI(model="meta-llama/Llama-3.1-8B-Instruct", base_url="http://localhost:8000/v1")
            chat = ChatDraftCompressed(llm=remote, context_window=128_000)  # or ratio=0.25
            local = ChatDraftCompressed(target="smollm2-135m-instruct", ratio=0.25, max_tokens=64)

    Invoke:
        .. code-block:: python

            messages = [("system", "Answer from the context."), ("human", f"Context:\n{docs}\n\nQuestion: {q}")]
            reply = chat.invoke(messages)
            reply.response_metadata["draft_rag"]  # tokens before/after, seconds, budget and budget_reason

    Stream:
        .. code-block:: python

            for chunk in chat.stream(messages):
                print(chunk.content, end="")  # the first chunk (wrapped) or the last (local) carries the stats

    Async:
        .. code-block:: python

            reply = await chat.ainvoke(messages)
            async for chunk in chat.astream(messages):
                ...

    What is compressed: the retrieved context inside the messages, wherever the template put it (system prompt,
    a ``Context:`` part, a tool result); instructions, the question and the chat structure are kept word for word
    (``draft_rag.messages``). Tool calling: with ``llm``, ``bind_tools`` binds on the wrapped model.
    """

    model_config = common.CONFIG

    @model_validator(mode="after")
    def _setup(self) -> ChatDraftCompressed:
        self._check_settings(BaseChatModel, "LangChain chat model", "LangChain BaseChatModel")
        return self

    # -- identity ------------------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "draft-rag-chat"

    def _options(self, stop, kwargs: dict) -> dict:
        opts = self._call_options(stop, kwargs, _CALL_OPTIONS, also_known=("model",))
        model = kwargs.get("model")
        if model is not None and model != self.model_name:
            raise ValueError(f"per-call model={model!r} is not supported; this instance runs {self.model_name!r}")
        return opts

    # -- local target --------------------------------------------------------------------------
    def _local_args(self, messages: list[BaseMessage], opts: dict) -> dict:
        return dict(
            messages=to_dicts(messages),
            method=opts["method"],
            budget=opts["budget"],
            ratio=opts["ratio"],
            template=self.template,
            max_new_tokens=opts["max_tokens"],
            temperature=opts["temperature"],
            top_p=opts["top_p"],
            top_k=opts["top_k"],
            stop=opts["stop"],
            seed=opts["seed"],
            **self._kv_args(),
        )

    def _kv_args(self) -> dict:
        """SpecKV-PC's prompt budget, the draft lookahead and sparse prefill, passed only when set."""
        names = ("pc_budget", "pc_ratio", "lookahead_tokens", "sparse_prefill")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def _local_final(self, text: str, reply) -> ChatGenerationChunk:
        st = reply.stats
        stats = st.to_dict()
        compression = stats.pop("compression")
        stats.update(
            {
                k: compression[k]
                for k in ("messages", "warning", "draft_original_tokens", "draft_kept_tokens")
                if k in compression
            }
        )
        usage = UsageMetadata(
            input_tokens=st.prompt_tokens, output_tokens=st.new_tokens, total_tokens=st.prompt_tokens + st.new_tokens
        )
        msg = AIMessageChunk(
            content=text,
            usage_metadata=usage,
            chunk_position="last",
            response_metadata={"model_name": self.model_name, "finish_reason": st.finish_reason, "draft_rag": stats},
        )
        return ChatGenerationChunk(message=msg, generation_info={"finish_reason": st.finish_reason})

    def _stream_local(self, messages, opts, run_manager) -> Iterator[ChatGenerationChunk]:
        reply = self._engine.stream(**self._local_args(messages, opts))
        held = None  # one piece is held back so the last chunk can carry the stats
        for piece in common.with_deadline(iter(reply), self.timeout):
            if held is not None:
                yield common.emit(ChatGenerationChunk(message=AIMessageChunk(content=held)), run_manager)
            held = piece
        yield common.emit(self._local_final(held or "", reply), run_manager)

    # -- wrapped chat model --------------------------------------------------------------------
    def _compress_messages(self, messages: list[BaseMessage], opts: dict) -> tuple[list[BaseMessage], dict]:
        dicts = to_dicts(messages)
        if not methods.get(opts["method"]).shortens_prompt:
            return list(messages), {"method": opts["method"], "messages": [], "budget_reason": common.SENT_WHOLE}
        kwargs, note = self._wrapped_budget(opts)
        compressed_chat = self._engine.compress_messages(dicts, **kwargs)
        logger.debug(
            "compressed %d messages: %s -> %s tokens",
            len(compressed_chat.stats.messages),
            compressed_chat.stats.original_tokens,
            compressed_chat.stats.compressed_tokens,
        )
        stats = {"method": opts["method"], **note, **compressed_chat.stats.to_dict()}
        return rebuild(messages, compressed_chat), stats

    def _forwarded(self, opts: dict) -> dict:
        """Keyword arguments for the wrapped model: unknown per-call ones, plus decoding settings set explicitly."""
        fw = {k: v for k, v in opts["extra"].items() if k != "model"}
        for name in _DECODING:
            if name in opts["given"] or name in self.model_fields_set:
                fw[name] = opts[name]
        return fw

    def _stream_wrapped(self, messages, opts, run_manager) -> Iterator[ChatGenerationChunk]:
        new, stats = self._compress_messages(messages, opts)
        config = common.child_config(run_manager)
        first = True
        for chunk in self.llm.stream(new, config=config, stop=opts["stop"] or None, **self._forwarded(opts)):
            yield common.emit(_wrapped_chunk(chunk, stats if first else None, self.model_name), run_manager)
            first = False

    async def _astream_wrapped(self, messages, opts, run_manager) -> AsyncIterator[ChatGenerationChunk]:
        new, stats = await asyncio.to_thread(self._compress_messages, messages, opts)
        config = common.child_config(run_manager)
        first = True
        async for chunk in self.llm.astream(new, config=config, stop=opts["stop"] or None, **self._forwarded(opts)):
            out = _wrapped_chunk(chunk, stats if first else None, self.model_name)
            if run_manager:
                await run_manager.on_llm_new_token(out.text, chunk=out)
            yield out
            first = False

    def _generate_wrapped(self, messages, opts, run_manager) -> ChatResult:
        new, stats = self._compress_messages(messages, opts)
        config = common.child_config(run_manager)
        result = self.llm.invoke(new, config=config, stop=opts["stop"] or None, **self._forwarded(opts))
        return _wrapped_result(result, stats, self.model_name)

    async def _agenerate_wrapped(self, messages, opts, run_manager) -> ChatResult:
        new, stats = await asyncio.to_thread(self._compress_messages, messages, opts)
        config = common.child_config(run_manager)
        result = await self.llm.ainvoke(new, config=config, stop=opts["stop"] or None, **self._forwarded(opts))
        return _wrapped_result(result, stats, self.model_name)

    def bind_tools(self, tools, **kwargs: Any):
        """Wrapped mode: the wrapped model binds (formats) the tools; tool calls and results pass uncompressed.

        A local target has no tool calling: ``NotImplementedError``.
        """
        if self.llm is None:
            raise NotImplementedError("tool calling needs a wrapped chat model (llm=...); a local target has none")
        bound = self.llm.bind_tools(tools, **kwargs)
        if not isinstance(bound, RunnableBinding):
            raise TypeError(f"{type(self.llm).__name__}.bind_tools returned {type(bound).__name__}, not a binding")
        return self.bind(**bound.kwargs)

    # -- LangChain entry points ----------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        opts = self._options(stop, kwargs)
        if self.llm is not None:
            return self._generate_wrapped(messages, opts, run_manager)
        return generate_from_stream(self._stream_local(messages, opts, run_manager))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        opts = self._options(stop, kwargs)
        if self.llm is not None:
            yield from self._stream_wrapped(messages, opts, run_manager)
        else:
            yield from self._stream_local(messages, opts, run_manager)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        opts = self._options(stop, kwargs)
        if self.llm is not None:
            return await self._agenerate_wrapped(messages, opts, run_manager)
        return await agenerate_from_stream(self._astream_local(messages, opts, run_manager))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        opts = self._options(stop, kwargs)
        stream = (
            self._astream_wrapped(messages, opts, run_manager)
            if self.llm is not None
            else self._astream_local(messages, opts, run_manager)
        )
        async for chunk in stream:
            yield chunk

    async def _astream_local(self, messages, opts, run_manager) -> AsyncIterator[ChatGenerationChunk]:
        """The local stream runs in one worker thread; the event loop only receives its chunks."""
        async for chunk in common.astream_in_thread(lambda: self._stream_local(messages, opts, None), run_manager):
            yield chunk


def _wrapped_chunk(chunk: BaseMessage, stats: dict | None, model_name: str) -> ChatGenerationChunk:
    """The wrapped model's chunk; the first one also carries the compression stats."""
    if not isinstance(chunk, AIMessageChunk):
        chunk = AIMessageChunk(content=chunk.content)
    if stats is not None:
        meta = dict(chunk.response_metadata)
        meta["draft_rag"] = stats
        meta.setdefault("model_name", model_name)
        chunk = chunk.model_copy(update={"response_metadata": meta})
    return ChatGenerationChunk(message=chunk)


def _wrapped_result(result: BaseMessage, stats: dict, model_name: str) -> ChatResult:
    if not isinstance(result, AIMessage):
        result = AIMessage(content=result.content)
    meta = dict(result.response_metadata)
    meta["draft_rag"] = stats
    meta.setdefault("model_name", model_name)
    return ChatResult(generations=[ChatGeneration(message=result.model_copy(update={"response_metadata": meta}))])
