"""DraftCompressedLLM: a LangChain text-completion LLM that compresses its prompt with a draft model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLanguageModel, BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import model_validator

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
    """Completion LLM with draft-guided prompt compression.

    The prompt is compressible context. Pass ``question=`` (and ``instruction=``) per call to have them
    appended and kept verbatim; without them SpecPC still always keeps the prompt's last ``window_size``
    (64) draft tokens. ``target=`` generates locally through ``DraftEngine``; ``llm=`` sends the compressed
    prompt to any LangChain language model instead. Other arguments as in ``ChatDraftCompressed``.
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
    def _stream_local(self, prompt: str, o: dict, run_manager) -> Iterator[GenerationChunk]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        gs = self._engine.stream(
            prompt or None,
            question=o["question"],
            instruction=o["instruction"],
            method=o["method"],
            budget=o["budget"],
            ratio=o["ratio"],
            template=self.template,
            max_new_tokens=o["max_tokens"],
            temperature=o["temperature"],
            top_p=o["top_p"],
            top_k=o["top_k"],
            stop=o["stop"],
            seed=o["seed"],
            **{
                n: getattr(self, n)
                for n in ("pc_budget", "pc_ratio", "lookahead_tokens")
                if getattr(self, n) is not None
            },
        )
        held = None
        for piece in common.with_deadline(iter(gs), self.timeout):
            if held is not None:
                yield common.emit(GenerationChunk(text=held), run_manager)
            held = piece
        info = {"finish_reason": gs.stats.finish_reason, "model_name": self.model_name, "draft_rag": gs.stats.to_dict()}
        if gs.compressed is not None:
            info["draft_rag"]["compressed_text"] = gs.compressed.text
        yield common.emit(GenerationChunk(text=held or "", generation_info=info), run_manager)

    # -- wrapped model -------------------------------------------------------------------------
    def _compress(self, prompt: str, o: dict) -> tuple[str, dict]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        stats: dict = {"method": o["method"]}
        if o["method"] == "full" or not prompt.strip():
            parts = [o["instruction"], prompt, o["question"]]
            return "\n\n".join(p for p in parts if p), stats
        cp = self._engine.compress(
            prompt, instruction=o["instruction"], question=o["question"], **self._wrapped_budget(o)
        )
        stats.update(
            original_tokens=cp.original_tokens,
            compressed_tokens=cp.compressed_tokens,
            token_counts="draft tokenizer",
            seconds=dict(cp.seconds),
            kept_spans=cp.kept_spans,
        )
        return cp.text, stats

    def _wrapped_kwargs(self, o: dict) -> dict:
        """Unknown per-call kwargs, plus decoding settings set explicitly (at construction or per call)."""
        fw = dict(o["extra"])
        for name in ("max_tokens", "temperature", "top_p", "top_k", "seed"):
            if name in o["given"] or name in self.model_fields_set:
                fw[name] = o[name]
        return fw

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        o = self._options(stop, kwargs)
        generations = []
        for prompt in prompts:
            if self.llm is None:
                chunks = list(self._stream_local(prompt, o, run_manager))
                text = "".join(c.text for c in chunks)
                generations.append([Generation(text=text, generation_info=chunks[-1].generation_info)])
                continue
            compressed, stats = self._compress(prompt, o)
            config = common.child_config(run_manager)
            out = self.llm.invoke(compressed, config=config, stop=o["stop"] or None, **self._wrapped_kwargs(o))
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
        o = self._options(stop, kwargs)
        if self.llm is None:
            yield from self._stream_local(prompt, o, run_manager)
            return
        compressed, stats = self._compress(prompt, o)
        config = common.child_config(run_manager)
        first = True
        for piece in self.llm.stream(compressed, config=config, stop=o["stop"] or None, **self._wrapped_kwargs(o)):
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
