"""DraftCompressedLLM: a LlamaIndex LLM backed by draft-rag's DraftEngine.

Two modes: ``target=...`` generates with a local HF model run by the engine (any method in
``draft_rag.engine.METHODS``); ``llm=...`` puts SpecPC (the draft) in front of any LlamaIndex LLM.
When a query engine formats a template with ``context_str`` (or ``context_msg``), only that context is
compressible: the text rendered before it is the instruction and the text after it (the query) the question.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
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
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.llm import LLM

from draft_rag import DraftEngine
from draft_rag import engine as engine_module
from draft_rag.aio import iterate_in_thread
from draft_rag.prompt import has_chat_template
from llama_index.llms.draft_rag.events import DraftCompressionEvent, dispatcher
from llama_index.llms.draft_rag.utils import configs_from_dict, engine_dict

_CONTEXT = "\u2063DRAFTRAG-CONTEXT\u2063"
CONTEXT_KEYS = ("context_str", "context_msg")  # what LlamaIndex's QA/refine/summary templates call retrieved text
_prepared: contextvars.ContextVar = contextvars.ContextVar("draft_rag_prepared", default=None)
GENERATION_KWARGS = ("max_new_tokens", "temperature", "top_p", "top_k", "stop", "seed")


class DraftCompressedLLM(LLM):
    """LlamaIndex LLM: local target through DraftEngine, or SpecPC in front of another LlamaIndex LLM.

    ``DraftCompressedLLM(target=REF, draft=REF, method="specpc", budget=N | ratio=R, max_new_tokens=256)``
    or ``DraftCompressedLLM(llm=<LLM>, draft=REF, budget=N | ratio=R)``. REF is anything ``load_model``
    accepts. ``budget``/``ratio`` is the prompt budget (draft tokens) for SpecPC and the KV budget for the
    KV methods (``speckv-pc`` takes its prompt budget as ``pc_budget``/``pc_ratio``; see
    ``DraftEngine.stream``). Responses carry ``additional_kwargs["draft_rag"]`` (token counts, seconds)
    and, locally, ``raw["usage"]`` (read by LlamaIndex's TokenCountingHandler) and ``raw["compressed"]``.
    """

    target: Any = Field(default=None, exclude=True, description="local target model (anything load_model accepts)")
    draft: Any = Field(default=None, exclude=True, description="draft model; defaults to the target or SmolLM2")
    llm: Optional[LLM] = Field(default=None, exclude=True, description="LlamaIndex LLM to put SpecPC in front of")
    method: str = Field(default="specpc", description="one of draft_rag.engine.METHODS")
    budget: Union[Annotated[int, Field(ge=1, strict=True)], Literal["auto"], None] = Field(
        default=None,
        description="prompt budget in draft tokens, or 'auto' (also the default for specpc): fit the "
        "context window (the target's; with llm=..., its metadata's minus num_output)",
    )
    ratio: Optional[float] = Field(
        default=None, gt=0, le=1, allow_inf_nan=False, description="prompt budget as a fraction of the prompt"
    )
    max_new_tokens: int = Field(default=256, ge=1, strict=True, description="local generation length")
    temperature: float = Field(
        default=0.0, ge=0, allow_inf_nan=False, description="local sampling temperature (0 = greedy)"
    )
    pc_budget: Optional[int] = Field(
        default=None, ge=1, strict=True, description="speckv-pc: SpecPC prompt budget (draft tokens)"
    )
    pc_ratio: Optional[float] = Field(
        default=None, gt=0, le=1, allow_inf_nan=False, description="speckv-pc: SpecPC budget as a fraction"
    )
    context_window: Optional[int] = Field(
        default=None, ge=1, strict=True, description="override the reported context window"
    )
    specpc: Any = Field(default=None, exclude=True, description="draft_rag.SpecPCConfig")
    speckv: Any = Field(default=None, exclude=True, description="draft_rag.SpecKVConfig (KV methods)")
    target_kwargs: Optional[dict] = Field(
        default=None,
        description="draft_rag.load_model options for the target: "
        "device_map, dtype, attn_implementation, device, model_kwargs",
    )
    draft_kwargs: Optional[dict] = Field(default=None, description="draft_rag.load_model options for the draft")
    _engine: DraftEngine = PrivateAttr()

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
        if self.method not in engine_module.METHODS:
            raise ValueError(f"method must be one of {engine_module.METHODS}, got {self.method!r}")
        if llm is not None and self.method != "specpc":
            raise ValueError(
                f"with llm=... only method='specpc' is possible (the wrapped LLM does its own "
                f"prefill), got {self.method!r}"
            )
        if self.budget is not None and self.ratio is not None:
            raise ValueError("give either budget (tokens or 'auto') or ratio (a fraction), not both")
        self._engine = engine or DraftEngine(
            target=target,
            draft=draft,
            method=self.method,
            specpc=self.specpc,
            speckv=self.speckv,
            target_kwargs=self.target_kwargs,
            draft_kwargs=self.draft_kwargs,
        )

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
            context_window=self.context_window or _window(target),
            num_output=self.max_new_tokens,
            is_chat_model=has_chat_template(target.tokenizer),
            model_name=f"{target.name} ({self.method}, draft {draft.name})",
        )

    # -- templates: find the retrieved context inside a formatted prompt --------------------------
    @dispatcher.span
    def predict(self, prompt, **prompt_args: Any) -> str:
        if self.llm is None or self._plan(prompt, prompt_args) is None:
            return super().predict(prompt, **prompt_args)
        return self.llm.predict(prompt, **self._front_args(prompt, prompt_args))

    @dispatcher.span
    def stream(self, prompt, **prompt_args: Any):
        if self.llm is None or self._plan(prompt, prompt_args) is None:
            return super().stream(prompt, **prompt_args)
        return self.llm.stream(prompt, **self._front_args(prompt, prompt_args))

    @dispatcher.span
    async def apredict(self, prompt, **prompt_args: Any) -> str:
        if self.llm is None or self._plan(prompt, prompt_args) is None:
            return await super().apredict(prompt, **prompt_args)
        args = await asyncio.to_thread(self._front_args, prompt, prompt_args)
        return await self.llm.apredict(prompt, **args)

    @dispatcher.span
    async def astream(self, prompt, **prompt_args: Any):
        if self.llm is None or self._plan(prompt, prompt_args) is None:
            return await super().astream(prompt, **prompt_args)
        args = await asyncio.to_thread(self._front_args, prompt, prompt_args)
        return await self.llm.astream(prompt, **args)

    def _get_prompt(self, prompt, **prompt_args: Any) -> str:
        if self.llm is not None:
            return self.llm._get_prompt(prompt, **prompt_args)
        text = super()._get_prompt(prompt, **prompt_args)
        plan = self._plan(prompt, prompt_args)
        if plan is not None:  # complete() picks it up: only the context is compressible
            _prepared.set((text, plan))
        return text

    def _get_messages(self, prompt, **prompt_args: Any) -> list[ChatMessage]:
        if self.llm is not None:
            return self.llm._get_messages(prompt, **prompt_args)
        messages = super()._get_messages(prompt, **prompt_args)
        plan = self._plan(prompt, prompt_args)
        if plan is not None:  # chat() picks it up: the template's context variable is the retrieved context
            _prepared.set((_key(messages), {"context": [prompt_args[plan["key"]]]}))
        return messages

    def _plan(self, prompt, prompt_args: dict) -> dict | None:
        """Instruction / context chunks / question of a template with a non-empty context variable."""
        key = next((k for k in CONTEXT_KEYS if isinstance(prompt_args.get(k), str) and prompt_args[k].strip()), None)
        if key is None:
            return None
        render = self.llm._get_prompt if self.llm is not None else super()._get_prompt  # system prompt etc. too
        layout = render(prompt, **dict(prompt_args, **{key: _CONTEXT}))
        if layout.count(_CONTEXT) != 1:
            return None
        before, _, after = layout.partition(_CONTEXT)
        return {
            "instruction": before.strip() or None,
            "question": after.strip() or None,
            "chunks": [c for c in prompt_args[key].split("\n\n") if c.strip()],
            "key": key,
        }

    def _front_args(self, prompt, prompt_args: dict) -> dict:
        """``prompt_args`` with the context variable compressed by SpecPC (template text protected)."""
        plan = self._plan(prompt, prompt_args)
        key = plan.pop("key")
        cp, _ = self._compress(**plan)
        return dict(prompt_args, **{key: "\n\n".join(c.text for c in cp.chunks if c.text)})

    @staticmethod
    def _take(key) -> dict | None:
        prepared = _prepared.get()
        if prepared is not None and prepared[0] == key:
            _prepared.set(None)
            return {k: v for k, v in prepared[1].items() if k != "key"}
        return None

    # -- completion ------------------------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        if self.llm is None:
            return _last(self._local_stream(_local_args(prompt, self._take(prompt)), kwargs))
        text, stats = self._front_prompt(prompt)
        return _annotate(self.llm.complete(text, formatted=formatted, **kwargs), stats)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        if self.llm is None:
            return self._local_stream(_local_args(prompt, self._take(prompt)), kwargs)
        text, stats = self._front_prompt(prompt)
        return (_annotate(r, stats) for r in self.llm.stream_complete(text, formatted=formatted, **kwargs))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        if self.llm is None:
            args = _local_args(prompt, self._take(prompt))
            return await _alast(lambda: self._local_stream(args, kwargs))
        text, stats = await asyncio.to_thread(self._front_prompt, prompt)
        return _annotate(await self.llm.acomplete(text, formatted=formatted, **kwargs), stats)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        if self.llm is None:
            args = _local_args(prompt, self._take(prompt))
            return iterate_in_thread(lambda: self._local_stream(args, kwargs))
        text, stats = await asyncio.to_thread(self._front_prompt, prompt)
        inner = await self.llm.astream_complete(text, formatted=formatted, **kwargs)
        return (_annotate(r, stats) async for r in inner)

    # -- chat ------------------------------------------------------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        if self.llm is None:
            return _as_chat(_last(self._local_stream(self._chat_args(messages), kwargs)))
        msgs, stats = self._front_messages(messages)
        return _annotate(self.llm.chat(msgs, **kwargs), stats)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        if self.llm is None:
            return (_as_chat(r) for r in self._local_stream(self._chat_args(messages), kwargs))
        msgs, stats = self._front_messages(messages)
        return (_annotate(r, stats) for r in self.llm.stream_chat(msgs, **kwargs))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        if self.llm is None:
            args = self._chat_args(messages)
            return _as_chat(await _alast(lambda: self._local_stream(args, kwargs)))
        msgs, stats = await asyncio.to_thread(self._front_messages, messages)
        return _annotate(await self.llm.achat(msgs, **kwargs), stats)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        if self.llm is None:
            args = self._chat_args(messages)
            return iterate_in_thread(lambda: (_as_chat(r) for r in self._local_stream(args, kwargs)))
        msgs, stats = await asyncio.to_thread(self._front_messages, messages)
        inner = await self.llm.astream_chat(msgs, **kwargs)
        return (_annotate(r, stats) async for r in inner)

    # -- local target ----------------------------------------------------------------------------
    def _chat_args(self, messages: Sequence[ChatMessage]) -> dict:
        """The conversation for the engine (answered in the target's chat template), and the template's context."""
        return {"messages": _dicts(messages), **(self._take(_key(messages)) or {})}

    def _local_stream(self, args: dict, kwargs: dict) -> Iterator[CompletionResponse]:
        """Responses as pieces are decoded; the last one carries the stats (and ``raw['usage']``)."""
        unknown = set(kwargs) - set(GENERATION_KWARGS)
        if unknown:
            raise TypeError(f"unsupported generation arguments {sorted(unknown)}; supported: {GENERATION_KWARGS}")
        gen = dict(max_new_tokens=self.max_new_tokens, temperature=self.temperature) | kwargs
        gs = self._engine.stream(
            **args,
            method=self.method,
            budget=self.budget,
            ratio=self.ratio,
            pc_budget=self.pc_budget,
            pc_ratio=self.pc_ratio,
            **gen,
        )
        return self._responses(gs)

    def _responses(self, gs) -> Iterator[CompletionResponse]:
        text, pending = "", None
        with contextlib.closing(iter(gs)) as pieces:  # closed here if abandoned: the engine lock is freed
            for piece in pieces:
                if pending is not None:
                    yield pending
                text += piece
                pending = CompletionResponse(text=text, delta=piece)
        stats = gs.stats.to_dict()
        usage = {
            "prompt_tokens": gs.stats.prompt_tokens,
            "completion_tokens": gs.stats.new_tokens,
            "total_tokens": gs.stats.prompt_tokens + gs.stats.new_tokens,
        }
        dispatcher.event(
            DraftCompressionEvent(
                component="llm",
                method=gs.stats.method,
                original_tokens=gs.stats.original_tokens,
                compressed_tokens=gs.stats.prompt_tokens,
                seconds=gs.stats.seconds,
                kv_bytes=gs.stats.kv_bytes,
                kv_bytes_full=gs.stats.kv_bytes_full,
            )
        )
        yield CompletionResponse(
            text=text,
            delta=pending.delta if pending else "",
            raw={"usage": usage, "compressed": gs.compressed.to_dict() if gs.compressed else None},
            additional_kwargs={"draft_rag": stats},
        )

    # -- SpecPC in front of another LLM ----------------------------------------------------------
    def _compress(self, **parts) -> tuple[Any, dict]:
        cp = self._engine.compress(**parts, **self._wrapped_budget())
        stats = {
            "method": "specpc",
            "original_tokens": cp.original_tokens,
            "compressed_tokens": cp.compressed_tokens,
            "seconds": cp.seconds,
        }
        dispatcher.event(DraftCompressionEvent(component="llm", **stats))
        return cp, stats

    def _wrapped_budget(self) -> dict:
        """With no budget (or ``"auto"``), fit the wrapped LLM's ``metadata.context_window - num_output``."""
        cfg = self._engine.specpc
        unset = self.budget is None and self.ratio is None and cfg.max_capacity_prompt is None and cfg.ratio is None
        if self.budget != "auto" and not unset:
            return {"budget": self.budget, "ratio": self.ratio}
        inner = self.llm.metadata
        window = (self.context_window or inner.context_window) - max(0, inner.num_output or 0)
        return {"budget": "auto", "context_window": window}

    def _front_prompt(self, prompt: str) -> tuple[str, dict]:
        cp, stats = self._compress(prompt=prompt)
        return cp.text, stats

    def _front_messages(self, messages: Sequence[ChatMessage]) -> tuple[list, dict]:
        """SpecPC on the retrieved context inside the messages (``draft_rag.messages``'s rule); the rest as is."""
        cm = self._engine.compress_messages(_dicts(messages), budget=self.budget, ratio=self.ratio)
        stats = {
            "method": "specpc",
            "original_tokens": cm.stats["original_tokens"],
            "compressed_tokens": cm.stats["compressed_tokens"],
            "seconds": cm.stats["seconds"],
        }
        dispatcher.event(DraftCompressionEvent(component="llm", **stats))
        changed = {m["message_index"] for m in cm.stats["messages"]}
        msgs = [_with_text(m, cm.messages[i]["content"]) if i in changed else m for i, m in enumerate(messages)]
        return msgs, {**stats, **{k: cm.stats[k] for k in ("messages", "warning") if k in cm.stats}}


def _window(loaded) -> int:
    cfg = loaded.model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return getattr(cfg, "max_position_embeddings", None) or DEFAULT_CONTEXT_WINDOW


def _local_args(prompt: str, plan: dict | None) -> dict:
    return plan if plan is not None else {"prompt": prompt}


def _key(messages: Sequence[ChatMessage]) -> tuple:
    return tuple((m.role, m.content) for m in messages)


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
    last = None
    for last in responses:  # noqa: B007 (the loop keeps the last item)
        pass
    last.delta = None
    return last


async def _alast(make: Callable[[], Iterator[CompletionResponse]]) -> CompletionResponse:
    """``_last`` off the event loop; cancelling the caller closes the stream (and frees the engine)."""
    last = None
    async for last in iterate_in_thread(make):  # noqa: B007 (the loop keeps the last item)
        pass
    last.delta = None
    return last
