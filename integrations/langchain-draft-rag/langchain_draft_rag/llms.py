"""DraftCompressedLLM: a LangChain text-completion LLM that compresses its prompt with a draft model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLanguageModel, BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import model_validator

from draft_rag import methods
from draft_rag.inputs import PromptInput

from . import _common as common

_CALL_OPTIONS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "budget",
    "ratio",
    "method",
    "question",
    "instruction",
)


class DraftCompressedLLM(common.DraftSettings, BaseLLM):
    """Completion LLM with draft-guided prompt compression: SpecPC in front of any LangChain LLM, or a local target.

    Setup:
        From a clone of draft-rag: ``bash scripts/setup.sh`` (installs this package, editable, and the built-in
        models). The draft defaults to the built-in SmolLM2-135M-Instruct.

    Key init args:
        llm / target / draft / method: as in ``ChatDraftCompressed`` (``llm`` is any LangChain language model).
        budget: int | "auto" | "adaptive" | None
            Draft tokens of prompt kept ("specpc"; KV entries per layer and head for the KV methods); "auto" (also
            what no budget means): fit the window (``context_window``, else ``draft_rag.config.ASSUMED_WINDOW``,
            logged once, for a wrapped model; the target's own window locally).
        ratio: float | None
            Instead of ``budget``: the fraction of the context KEPT (0.25 keeps a quarter).
        max_tokens, temperature, stop, timeout, ...: as in ``ChatDraftCompressed`` (``max_tokens`` is LangChain's
            name for the output limit in both classes).

    How a prompt is read: laid out by ``draft_rag.messages``'s rule, as a chat message would be: labelled parts
    (``Context:`` is compressible; ``Question:``, ``Answer:``, ``Instructions:`` are kept), the first paragraph and
    the question at the end kept word for word; so in a long prompt every draft pass reads the question (a question
    asked before the context is read again by the draft at the end; it is not sent twice). Prompts shorter than
    1200 characters are all context. Per call, ``question=`` (and ``instruction=``) make the whole
    prompt context, with them appended (prepended) and kept.

    Instantiate:
        .. code-block:: python

            from langchain_core.prompts import PromptTemplate
            from langchain_openai import OpenAI
            from langchain_draft_rag import DraftCompressedLLM

            llm = DraftCompressedLLM(llm=OpenAI(model="gpt-3.5-turbo-instruct"), ratio=0.25)
            chain = PromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}\nAnswer:") | llm

    Invoke:
        .. code-block:: python

            answer = chain.invoke({"context": docs, "question": q})
            result = llm.generate([prompt])  # result.generations[0][0].generation_info["draft_rag"]: the stats

    Stream:
        .. code-block:: python

            for piece in llm.stream(prompt):
                print(piece, end="")

    Async:
        .. code-block:: python

            answer = await chain.ainvoke({"context": docs, "question": q})
            async for piece in llm.astream(prompt):
                ...
    """

    model_config = common.CONFIG

    @model_validator(mode="after")
    def _setup(self) -> DraftCompressedLLM:
        self._check_settings(BaseLanguageModel, "LangChain model", "LangChain language model")
        return self

    @property
    def _llm_type(self) -> str:
        return "draft-rag"

    def _options(self, stop, kwargs: dict) -> dict:
        return self._call_options(stop, kwargs, _CALL_OPTIONS)

    # -- local target --------------------------------------------------------------------------
    def _stream_local(self, prompt: str, opts: dict, run_manager) -> Iterator[GenerationChunk]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        reply = self._engine.stream(
            _request(prompt, opts),
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
            **{
                n: getattr(self, n)
                for n in ("pc_budget", "pc_ratio", "lookahead_tokens", "sparse_prefill")
                if getattr(self, n) is not None
            },
        )
        held = None
        for piece in common.with_deadline(iter(reply), self.timeout):
            if held is not None:
                yield common.emit(GenerationChunk(text=held), run_manager)
            held = piece
        info = {
            "finish_reason": reply.stats.finish_reason,
            "model_name": self.model_name,
            "draft_rag": reply.stats.to_dict(),
        }
        if reply.compressed is not None:
            info["draft_rag"]["compressed_text"] = reply.compressed.text
        yield common.emit(GenerationChunk(text=held or "", generation_info=info), run_manager)

    # -- wrapped model -------------------------------------------------------------------------
    def _compress(self, prompt: str, opts: dict) -> tuple[str, dict]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        stats: dict = {"method": opts["method"]}
        if not methods.get(opts["method"]).shortens_prompt or not prompt.strip():
            parts = [opts["instruction"], prompt, opts["question"]]
            why = common.SENT_WHOLE if prompt.strip() else "an empty prompt: nothing to compress"
            return "\n\n".join(p for p in parts if p), {**stats, "budget_reason": why}
        kwargs, note = self._wrapped_budget(opts)
        shortened = self._engine.compress(_request(prompt, opts), **kwargs)
        stats.update(
            **note,
            original_tokens=shortened.original_tokens,
            compressed_tokens=shortened.compressed_tokens,
            token_counts="draft tokenizer",
            seconds=dict(shortened.seconds),
            kept_spans=shortened.kept_spans,
        )
        if shortened.left_whole:
            stats["left_whole"] = shortened.left_whole
        return shortened.text, stats

    def _wrapped_kwargs(self, opts: dict) -> dict:
        """Unknown per-call kwargs, plus decoding settings set explicitly (at construction or per call)."""
        fw = dict(opts["extra"])
        for name in ("max_tokens", "temperature", "top_p", "top_k", "seed"):
            if name in opts["given"] or name in self.model_fields_set:
                fw[name] = opts[name]
        return fw

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        opts = self._options(stop, kwargs)
        generations = []
        for prompt in prompts:
            if self.llm is None:
                chunks = list(self._stream_local(prompt, opts, run_manager))
                text = "".join(c.text for c in chunks)
                generations.append([Generation(text=text, generation_info=chunks[-1].generation_info)])
                continue
            compressed, stats = self._compress(prompt, opts)
            config = common.child_config(run_manager)
            out = self.llm.invoke(compressed, config=config, stop=opts["stop"] or None, **self._wrapped_kwargs(opts))
            text = out if isinstance(out, str) else out.text
            generations.append(
                [Generation(text=text, generation_info={"model_name": self.model_name, "draft_rag": stats})]
            )
        return LLMResult(generations=generations, llm_output={"model_name": self.model_name})

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        opts = self._options(stop, kwargs)
        if self.llm is None:
            yield from self._stream_local(prompt, opts, run_manager)
            return
        compressed, stats = self._compress(prompt, opts)
        config = common.child_config(run_manager)
        first = True
        for piece in self.llm.stream(
            compressed, config=config, stop=opts["stop"] or None, **self._wrapped_kwargs(opts)
        ):
            text = piece if isinstance(piece, str) else piece.text
            info = {"model_name": self.model_name, "draft_rag": stats} if first else None
            yield common.emit(GenerationChunk(text=text, generation_info=info), run_manager)
            first = False

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        """The whole sync stream runs in one worker thread; the event loop only receives its chunks."""
        async for chunk in common.astream_in_thread(lambda: self._stream(prompt, stop, None, **kwargs), run_manager):
            yield chunk


def _request(prompt: str, opts: dict) -> PromptInput:
    """The call's input: the prompt laid out by ``draft_rag.messages``'s rule (its ``Question:`` and instructions
    protected), or, with ``question=`` / ``instruction=`` per call, all context between them."""
    if opts["question"] is None and opts["instruction"] is None:
        return PromptInput(prompt or None, split=True)
    return PromptInput(prompt or None, instruction=opts["instruction"], question=opts["question"])
