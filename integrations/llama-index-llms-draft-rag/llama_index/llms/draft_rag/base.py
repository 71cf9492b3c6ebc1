"""DraftCompressedLLM: a LlamaIndex LLM backed by draft-rag's DraftEngine (docs/llamaindex.md).

When a query engine formats a template with ``context_str`` (or ``context_msg``), only that context is
compressible: ``predict``/``stream`` (and their async forms) render templates themselves (``templates``) and hand
what they found to ``complete``/``chat`` as the explicit argument ``parts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any, Literal, Optional, Union

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.instrumentation.events.llm import LLMPredictEndEvent, LLMPredictStartEvent
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.llm import (
    LLM,
    astream_chat_response_to_tokens,
    astream_completion_response_to_tokens,
    stream_chat_response_to_tokens,
    stream_completion_response_to_tokens,
)
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.types import TokenAsyncGen, TokenGen

from draft_rag import DraftEngine
from draft_rag.adapters import (
    check_settings,
    configs_from_dict,
    engine_dict,
    engine_of,
    front_messages,
    front_prompt,
    has_chat_template,
    hold_last,
    iterate_in_thread,
    options_of,
    prompt_input,
    rebuild,
    setting,
    usage,
)
from llama_index.llms.draft_rag.events import DraftCompressionEvent, dispatcher
from llama_index.llms.draft_rag.templates import log_template, render_messages, render_prompt

logger = logging.getLogger(__name__)
_CONTEXT = "\u2063DRAFTRAG-CONTEXT\u2063"
CONTEXT_KEYS = ("context_str", "context_msg")  # what LlamaIndex's QA/refine/summary templates call retrieved text
GENERATION_KWARGS = ("max_new_tokens", "temperature", "top_p", "top_k", "stop", "seed")


class DraftCompressedLLM(LLM):
    """LlamaIndex LLM: local target through DraftEngine, or SpecPC in front of another LlamaIndex LLM.

    ``DraftCompressedLLM(target=REF, draft=REF, method="specpc", budget=N | ratio=R, max_new_tokens=256)``
    or ``DraftCompressedLLM(llm=<LLM>, draft=REF, budget=N | ratio=R)``; REF is anything ``load_model`` accepts and
    the fields' descriptions say the rest. With no budget, ``complete`` and ``chat`` (and their stream/async forms)
    fit ``context_window`` (else the target's or the wrapped LLM's) minus ``num_output``. Responses carry
    ``additional_kwargs["draft_rag"]`` (token counts, seconds, ``budget_reason``) and, locally, ``raw["usage"]``
    (read by LlamaIndex's TokenCountingHandler) and ``raw["compressed"]``. ``complete`` on a plain prompt keeps its
    ``Question:`` and instructions (``draft_rag.adapters.prompt_input``).
    """

    target: Any = Field(exclude=True, **setting("target"))
    draft: Any = Field(exclude=True, **setting("draft"))
    llm: Optional[LLM] = Field(exclude=True, **setting("llm"))
    method: str = Field(**setting("method"))
    budget: Union[Annotated[int, Field(ge=1, strict=True)], Literal["auto", "adaptive"], None] = Field(
        **setting("budget")
    )
    ratio: Optional[float] = Field(**setting("ratio"))
    max_new_tokens: int = Field(**setting("max_tokens"))
    temperature: float = Field(**setting("temperature"))
    pc_budget: Optional[int] = Field(**setting("pc_budget"))
    pc_ratio: Optional[float] = Field(**setting("pc_ratio"))
    context_window: Optional[int] = Field(**setting("context_window"))
    sparse_prefill: Optional[bool] = Field(**setting("sparse_prefill"))
    specpc: Any = Field(exclude=True, **setting("specpc"))
    speckv: Any = Field(exclude=True, **setting("speckv"))
    target_kwargs: Optional[dict] = Field(**setting("target_kwargs"))
    draft_kwargs: Optional[dict] = Field(**setting("draft_kwargs"))
    context_cache_mb: float = Field(**setting("context_cache_mb"))
    chunk_cache_mb: float = Field(**setting("chunk_cache_mb"))
    _engine: DraftEngine = PrivateAttr()
    _warned_window: bool = PrivateAttr(default=False)

    def __init__(
        self,
        target: Any = None,
        draft: Any = None,
        *,
        llm: Optional[LLM] = None,
        engine: DraftEngine | None = None,
        **kwargs: Any,
    ):
        if llm is not None and not isinstance(llm, LLM):
            raise TypeError(f"llm must be a LlamaIndex LLM, got {type(llm).__name__}")
        super().__init__(target=target, draft=draft, llm=llm, **kwargs)
        if (target is not None or (engine is not None and engine.target is not None)) == (llm is not None):
            raise ValueError(
                "give exactly one of target=<model> (generate locally) or llm=<LlamaIndex LLM> (SpecPC in front of it)"
            )
        check_settings(self.method, llm is not None, self.sparse_prefill, self.budget, self.ratio)
        self._engine = engine or engine_of(self, target, draft)

    @classmethod
    def class_name(cls) -> str:
        return "DraftCompressedLLM"

    def to_dict(self, **kwargs: Any) -> dict:
        """The settings, with the models as reference strings and the configs as dicts (``from_dict`` reloads them).

        A wrapped ``llm`` is not serialised: give it again, ``DraftCompressedLLM.from_dict(data, llm=...)``.
        """
        keys = ("draft", "specpc", "speckv") + (("target",) if self.llm is None else ())
        return {**super().to_dict(**kwargs), **engine_dict(self._engine, *keys)}

    @classmethod
    def from_dict(cls, data: dict, **kwargs: Any) -> DraftCompressedLLM:
        return super().from_dict(configs_from_dict(data), **kwargs)

    @property
    def engine(self) -> DraftEngine:
        return self._engine

    @property
    def metadata(self) -> LLMMetadata:
        """The wrapped LLM's (or the local target's) window: the draft scores longer prompts in blocks."""
        draft = self._engine.draft
        if self.llm is not None:
            inner = self.llm.metadata
            window = self.context_window or inner.context_window
            return inner.model_copy(
                update={"context_window": window, "model_name": f"{inner.model_name} (specpc, draft {draft.name})"}
            )
        target = self._engine.target
        return LLMMetadata(
            context_window=self.context_window or self._engine.target_window or DEFAULT_CONTEXT_WINDOW,
            num_output=self.max_new_tokens,
            is_chat_model=has_chat_template(target.tokenizer),
            model_name=f"{target.name} ({self.method}, draft {draft.name})",
        )

    # -- templates: find the retrieved context inside a formatted prompt --------------------------
    @dispatcher.span
    def predict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        plan = self._plan(prompt, prompt_args)
        if self.llm is not None and plan is not None:
            return self.llm.predict(prompt, **self._front_args(plan, prompt_args))
        chat, rendered, extra = self._start(prompt, prompt_args, plan)
        if chat:
            return self._predicted(self.chat(rendered, **extra).message.content or "")
        return self._predicted(self.complete(rendered, formatted=True, **extra).text)

    @dispatcher.span
    def stream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> TokenGen:
        plan = self._plan(prompt, prompt_args)
        if self.llm is not None and plan is not None:
            return self.llm.stream(prompt, **self._front_args(plan, prompt_args))
        chat, rendered, extra = self._start(prompt, prompt_args, plan, streaming=True)
        if chat:
            return stream_chat_response_to_tokens(self.stream_chat(rendered, **extra))
        return stream_completion_response_to_tokens(self.stream_complete(rendered, formatted=True, **extra))

    @dispatcher.span
    async def apredict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        plan = self._plan(prompt, prompt_args)
        if self.llm is not None and plan is not None:
            args = await asyncio.to_thread(self._front_args, plan, prompt_args)
            return await self.llm.apredict(prompt, **args)
        chat, rendered, extra = self._start(prompt, prompt_args, plan)
        if chat:
            return self._predicted((await self.achat(rendered, **extra)).message.content or "")
        return self._predicted((await self.acomplete(rendered, formatted=True, **extra)).text)

    @dispatcher.span
    async def astream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> TokenAsyncGen:
        plan = self._plan(prompt, prompt_args)
        if self.llm is not None and plan is not None:
            args = await asyncio.to_thread(self._front_args, plan, prompt_args)
            return await self.llm.astream(prompt, **args)
        chat, rendered, extra = self._start(prompt, prompt_args, plan, streaming=True)
        if chat:
            return await astream_chat_response_to_tokens(await self.astream_chat(rendered, **extra))
        inner = await self.astream_complete(rendered, formatted=True, **extra)
        return await astream_completion_response_to_tokens(inner)

    def _plan(self, prompt: BasePromptTemplate, prompt_args: dict) -> tuple[str, dict] | None:
        """The context variable of a template with a non-empty one, and its instruction / chunks / question."""
        key = next((k for k in CONTEXT_KEYS if isinstance(prompt_args.get(k), str) and prompt_args[k].strip()), None)
        if key is None:
            return None
        layout = render_prompt(self._renderer, prompt, **dict(prompt_args, **{key: _CONTEXT}))  # system prompt etc.
        if layout.count(_CONTEXT) != 1:
            return None
        before, _, after = layout.partition(_CONTEXT)
        chunks = [c for c in prompt_args[key].split("\n\n") if c.strip()]
        return key, {"instruction": before.strip() or None, "chunks": chunks, "question": after.strip() or None}

    def _start(
        self, prompt: BasePromptTemplate, prompt_args: dict, plan: tuple[str, dict] | None, streaming: bool = False
    ) -> tuple[bool, Any, dict]:
        """What ``LLM.predict`` does before it calls the model: its events, then the template rendered.

        Returns (chat model?, the messages or prompt, the keyword arguments for ``chat``/``complete``: with a plan,
        ``parts``, so that only the template's context is compressed). A wrapped LLM's settings render it.
        """
        if streaming and (prompt.output_parser is not None or self.output_parser is not None):
            raise NotImplementedError("Output parser is not supported for streaming.")
        dispatcher.event(LLMPredictStartEvent(template=prompt, template_args=prompt_args))
        log_template(self, prompt, prompt_args)
        if self.metadata.is_chat_model:
            extra = {"parts": {"context": [prompt_args[plan[0]]]}} if plan else {}
            return True, render_messages(self._renderer, prompt, **prompt_args), extra
        return False, render_prompt(self._renderer, prompt, **prompt_args), {"parts": plan[1]} if plan else {}

    def _predicted(self, output: str) -> str:
        parsed = str(self.output_parser.parse(output)) if self.output_parser is not None else output
        dispatcher.event(LLMPredictEndEvent(output=parsed))
        return parsed

    @property
    def _renderer(self) -> LLM:
        return self.llm if self.llm is not None else self

    def _front_args(self, plan: tuple[str, dict], prompt_args: dict) -> dict:
        """``prompt_args`` with the context variable compressed by SpecPC (template text protected)."""
        key, parts = plan
        shortened, _ = self._front(front_prompt, **parts)
        if shortened is None:
            return prompt_args
        return dict(prompt_args, **{key: "\n\n".join(c.text for c in shortened.chunks if c.text)})

    # -- completion ------------------------------------------------------------------------------
    # ``parts`` (what predict() finds in a template) replace the prompt's own layout: instruction / chunks /
    # question for complete, ``context`` (the retrieved texts inside the messages) for chat.
    @llm_completion_callback()
    def complete(
        self, prompt: str, formatted: bool = False, *, parts: dict | None = None, **kwargs: Any
    ) -> CompletionResponse:
        if self.llm is None:
            return _last(self._local_stream(_prompt_args(prompt, parts), kwargs))
        text, stats = self._front_prompt(prompt, parts)
        return _annotate(self.llm.complete(text, formatted=formatted, **kwargs), stats)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, *, parts: dict | None = None, **kwargs: Any
    ) -> CompletionResponseGen:
        if self.llm is None:
            return self._local_stream(_prompt_args(prompt, parts), kwargs)
        text, stats = self._front_prompt(prompt, parts)
        return (_annotate(r, stats) for r in self.llm.stream_complete(text, formatted=formatted, **kwargs))

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, *, parts: dict | None = None, **kwargs: Any
    ) -> CompletionResponse:
        if self.llm is None:
            return await _alast(lambda: self._local_stream(_prompt_args(prompt, parts), kwargs))
        text, stats = await asyncio.to_thread(self._front_prompt, prompt, parts)
        return _annotate(await self.llm.acomplete(text, formatted=formatted, **kwargs), stats)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, *, parts: dict | None = None, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        if self.llm is None:
            return iterate_in_thread(lambda: self._local_stream(_prompt_args(prompt, parts), kwargs))
        text, stats = await asyncio.to_thread(self._front_prompt, prompt, parts)
        inner = await self.llm.astream_complete(text, formatted=formatted, **kwargs)
        return (_annotate(r, stats) async for r in inner)

    # -- chat ------------------------------------------------------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], *, parts: dict | None = None, **kwargs: Any) -> ChatResponse:
        if self.llm is None:
            return _as_chat(_last(self._local_stream(self._chat_args(messages, parts), kwargs)))
        msgs, stats = self._front_messages(messages, parts)
        return _annotate(self.llm.chat(msgs, **kwargs), stats)

    @llm_chat_callback()
    def stream_chat(
        self, messages: Sequence[ChatMessage], *, parts: dict | None = None, **kwargs: Any
    ) -> ChatResponseGen:
        if self.llm is None:
            return (_as_chat(r) for r in self._local_stream(self._chat_args(messages, parts), kwargs))
        msgs, stats = self._front_messages(messages, parts)
        return (_annotate(r, stats) for r in self.llm.stream_chat(msgs, **kwargs))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], *, parts: dict | None = None, **kwargs: Any) -> ChatResponse:
        if self.llm is None:
            args = self._chat_args(messages, parts)
            return _as_chat(await _alast(lambda: self._local_stream(args, kwargs)))
        msgs, stats = await asyncio.to_thread(self._front_messages, messages, parts)
        return _annotate(await self.llm.achat(msgs, **kwargs), stats)

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], *, parts: dict | None = None, **kwargs: Any
    ) -> ChatResponseAsyncGen:
        if self.llm is None:
            args = self._chat_args(messages, parts)
            return iterate_in_thread(lambda: (_as_chat(r) for r in self._local_stream(args, kwargs)))
        msgs, stats = await asyncio.to_thread(self._front_messages, messages, parts)
        inner = await self.llm.astream_chat(msgs, **kwargs)
        return (_annotate(r, stats) async for r in inner)

    # -- local target ----------------------------------------------------------------------------
    def _chat_args(self, messages: Sequence[ChatMessage], parts: dict | None) -> dict:
        """The conversation for the engine (answered in the target's chat template), and the template's context."""
        return {"messages": _dicts(messages), **(parts or {})}

    def _local_stream(self, args: dict, kwargs: dict) -> Iterator[CompletionResponse]:
        """Responses as pieces are decoded; the last one carries the stats (and ``raw['usage']``)."""
        unknown = set(kwargs) - set(GENERATION_KWARGS)
        if unknown:
            raise TypeError(f"unsupported generation arguments {sorted(unknown)}; supported: {GENERATION_KWARGS}")
        return self._responses(self._engine.stream(**args, options=options_of(self, **kwargs)))

    def _responses(self, reply) -> Iterator[CompletionResponse]:
        text = ""
        with contextlib.closing(iter(reply)) as pieces:  # closed here if abandoned: the engine lock is freed
            for piece, last in hold_last(pieces):
                text += piece
                if not last:
                    yield CompletionResponse(text=text, delta=piece)
        st = reply.stats
        counts = {"original_tokens": st.original_tokens, "compressed_tokens": st.prompt_tokens, "seconds": st.seconds}
        kv = {"kv_bytes": st.kv_bytes, "kv_bytes_full": st.kv_bytes_full}
        dispatcher.event(DraftCompressionEvent(component="llm", method=st.method, **counts, **kv))
        yield CompletionResponse(
            text=text,
            delta=piece,
            raw={"usage": usage(st), "compressed": reply.compressed.to_dict() if reply.compressed else None},
            additional_kwargs={"draft_rag": st.to_dict()},
        )

    # -- SpecPC in front of another LLM ----------------------------------------------------------
    def _front(self, compress, *args, **parts) -> tuple[Any, dict]:
        """``draft_rag.adapters.front_prompt``/``front_messages`` in front of the wrapped LLM; with no budget,
        ``"auto"`` or ``"adaptive"``, the prompt (``complete``) or conversation (``chat``) fits ``context_window``
        (this LLM's, else the wrapped LLM's metadata) minus the wrapped LLM's ``num_output``."""
        inner = self.llm.metadata
        window = (self.context_window or inner.context_window) - max(0, inner.num_output or 0)
        if self.context_window:
            source = f"context_window={self.context_window} set here, minus num_output={inner.num_output}"
        else:
            source = f"the wrapped LLM's metadata: context_window={inner.context_window} minus num_output"
            if inner.context_window == DEFAULT_CONTEXT_WINDOW:
                source += f" ({DEFAULT_CONTEXT_WINDOW} is LlamaIndex's default for an LLM that does not know its own)"
                if not self._warned_window:  # once per instance
                    self._warned_window = True
                    logger.warning(
                        "DraftCompressedLLM: the wrapped %s reports LlamaIndex's default context_window=%d; prompts "
                        "are fitted to it. If its real window differs, set context_window=... here (or on it) or "
                        "budget=...", type(self.llm).__name__, DEFAULT_CONTEXT_WINDOW,
                    )  # fmt: skip
        out, stats = compress(self._engine, self.method, self.budget, self.ratio, window, source, *args, **parts)
        if out is not None:
            counts = {k: stats[k] for k in ("original_tokens", "compressed_tokens", "seconds")}
            dispatcher.event(DraftCompressionEvent(component="llm", method=self.method, **counts))
        return out, stats

    def _front_prompt(self, prompt: str, parts: dict | None) -> tuple[str, dict]:
        shortened, stats = self._front(front_prompt, **_prompt_args(prompt, parts))
        return (shortened.text if shortened else prompt), stats

    def _front_messages(self, messages: Sequence[ChatMessage], parts: dict | None) -> tuple[list, dict]:
        """SpecPC on the retrieved context inside the messages (``draft_rag.messages``'s rule); the rest as is."""
        compressed, stats = self._front(front_messages, _dicts(messages), **(parts or {}))
        return rebuild(messages, compressed, _with_text), stats


def _prompt_args(prompt: str, parts: dict | None) -> dict:
    """``complete``'s input for the engine: the template's ``parts``, else the prompt laid out by
    ``draft_rag.messages``'s rule (its ``Question:`` and instructions protected, as in ``chat``)."""
    return parts or {"prompt": prompt_input(prompt)}


_ROLES = {"chatbot": "assistant", "model": "assistant"}


def _dicts(messages: Sequence[ChatMessage]) -> list[dict]:
    """LlamaIndex messages as the core's OpenAI-style dicts (non-text blocks stay visible as non-text parts)."""
    if not messages:
        raise ValueError("messages must not be empty")
    out = []
    for m in messages:
        others = [{"type": b.block_type} for b in m.blocks if not isinstance(b, TextBlock)]
        text = "".join(b.text for b in m.blocks if isinstance(b, TextBlock))
        d = {
            "role": _ROLES.get(m.role.value, m.role.value),
            "content": [{"type": "text", "text": text}] + others if others else text,
        }
        extra = m.additional_kwargs
        d.update({k: extra[k] for k in ("tool_calls", "tool_call_id", "name") if extra.get(k)})
        out.append(d)
    return out


def _with_text(message: ChatMessage, text: str) -> ChatMessage:
    """A copy of ``message`` whose text blocks become one block ``text`` (other blocks kept)."""
    others = [b for b in message.blocks if not isinstance(b, TextBlock)]
    return message.model_copy(update={"blocks": [TextBlock(text=text)] + others})


def _as_chat(response: CompletionResponse) -> ChatResponse:
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, content=response.text),
        delta=response.delta,
        raw=response.raw,
        additional_kwargs=response.additional_kwargs,
    )


def _annotate(response, stats: dict):
    response.additional_kwargs["draft_rag"] = stats
    return response


def _last(responses: Iterator[CompletionResponse]) -> CompletionResponse:
    last = deque(responses, maxlen=1).pop()
    last.delta = None
    return last


async def _alast(make: Callable[[], Iterator[CompletionResponse]]) -> CompletionResponse:
    """``_last`` off the event loop; cancelling the caller closes the stream (and frees the engine)."""
    last = None
    async for last in iterate_in_thread(make):  # noqa: B007 (the loop keeps the last item)
        pass
    last.delta = None
    return last
