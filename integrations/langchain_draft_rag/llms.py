"""DraftCompressedLLM: a LangChain text-completion LLM that compresses its prompt with a draft model."""
from __future__ import annotations

from typing import Any, AsyncIterator, Iterator

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLanguageModel, BaseLLM, LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import ConfigDict, PrivateAttr, model_validator

from draft_rag import DraftEngine

from . import _common as common

_CALL_OPTIONS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "budget", "ratio", "method",
                 "question", "instruction")


class DraftCompressedLLM(BaseLLM):
    """Completion LLM with draft-guided prompt compression.

    The prompt is compressible context. Pass ``question=`` (and ``instruction=``) per call to have them
    appended and kept verbatim; without them SpecPC still always keeps the prompt's last ``window_size``
    (64) draft tokens. ``target=`` generates locally through ``DraftEngine``; ``llm=`` sends the compressed
    prompt to any LangChain language model instead. Other arguments as in ``ChatDraftCompressed``.
    """

    target: Any = None
    llm: Any = None
    draft: Any = None
    method: str = "specpc"
    budget: int | None = None
    ratio: float | None = None
    pc_budget: int | None = None
    pc_ratio: float | None = None
    lookahead_tokens: int | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] | None = None
    timeout: float | None = None
    max_retries: int = 0
    streaming: bool = False
    template: str | None = None
    specpc: Any = None
    speckv: Any = None

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")
    _engine: DraftEngine = PrivateAttr()

    @model_validator(mode="after")
    def _setup(self) -> "DraftCompressedLLM":
        if (self.target is None) == (self.llm is None):
            raise ValueError("give exactly one of target=... (a local model) or llm=... (a LangChain model)")
        if self.llm is not None and not isinstance(self.llm, BaseLanguageModel):
            raise TypeError(f"llm must be a LangChain language model, got {type(self.llm).__name__}")
        common.check_method(self.method)
        if self.llm is not None and self.method not in ("specpc", "full"):
            raise ValueError(f"method={self.method!r} needs a local target; with llm=... use 'specpc' or 'full'")
        common.check_budget(self.budget, self.ratio)
        common.check_budget(self.pc_budget, self.pc_ratio, "pc_")
        common.check_positive_int("max_tokens", self.max_tokens)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if self.template not in (None, "chat", "raw"):
            raise ValueError(f"template must be 'chat', 'raw' or None, got {self.template!r}")
        self.stop = common.stop_list(self.stop) or None
        self._engine = common.shared_engine(self.target, self.draft, self.specpc, self.speckv)
        return self

    @property
    def _llm_type(self) -> str:
        return "draft-rag"

    @property
    def model_name(self) -> str:
        if self.llm is not None:
            inner = getattr(self.llm, "model_name", None) or getattr(self.llm, "model", None)
            return inner if isinstance(inner, str) and inner else type(self.llm).__name__
        return self._engine.target.name

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "draft": self._engine.draft.name, "method": self.method,
                "budget": self.budget, "ratio": self.ratio, "max_tokens": self.max_tokens}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="draft_rag", ls_model_type="llm",
                                 ls_model_name=kwargs.get("model") or self.model_name,
                                 ls_temperature=kwargs.get("temperature", self.temperature),
                                 ls_max_tokens=kwargs.get("max_tokens", self.max_tokens))
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def _options(self, stop, kwargs: dict) -> dict:
        unknown = [k for k in kwargs if k not in _CALL_OPTIONS and not k.startswith("ls_")]
        if unknown and self.llm is None:
            raise TypeError(f"unexpected keyword arguments {unknown}; accepted per call: {_CALL_OPTIONS}")
        o = {k: kwargs.get(k, getattr(self, k, None)) for k in _CALL_OPTIONS}
        if "budget" in kwargs or "ratio" in kwargs:
            o["budget"], o["ratio"] = kwargs.get("budget"), kwargs.get("ratio")
        common.check_budget(o["budget"], o["ratio"])
        common.check_method(o["method"])
        if self.llm is not None and o["method"] not in ("specpc", "full"):
            raise ValueError(f"method={o['method']!r} needs a local target; with llm=... use 'specpc' or 'full'")
        o["given"] = set(kwargs)
        o["stop"] = common.stop_list(stop if stop is not None else self.stop)
        o["extra"] = {k: v for k, v in kwargs.items() if k not in _CALL_OPTIONS and not k.startswith("ls_")}
        return o

    # -- local target --------------------------------------------------------------------------
    def _stream_local(self, prompt: str, o: dict, run_manager) -> Iterator[GenerationChunk]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        gs = self._engine.stream(prompt or None, question=o["question"], instruction=o["instruction"],
                                 method=o["method"], budget=o["budget"], ratio=o["ratio"], template=self.template,
                                 max_new_tokens=o["max_tokens"], temperature=o["temperature"], top_p=o["top_p"],
                                 top_k=o["top_k"], stop=o["stop"], seed=o["seed"],
                                 **{n: getattr(self, n) for n in ("pc_budget", "pc_ratio", "lookahead_tokens")
                                    if getattr(self, n) is not None})
        held = None
        for piece in common.with_deadline(iter(gs), self.timeout):
            if held is not None:
                yield _emit(GenerationChunk(text=held), run_manager)
            held = piece
        info = {"finish_reason": gs.stats.finish_reason, "model_name": self.model_name,
                "draft_rag": gs.stats.to_dict()}
        if gs.compressed is not None:
            info["draft_rag"]["compressed_text"] = gs.compressed.text
        yield _emit(GenerationChunk(text=held or "", generation_info=info), run_manager)

    # -- wrapped model -------------------------------------------------------------------------
    def _compress(self, prompt: str, o: dict) -> tuple[str, dict]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        stats: dict = {"method": o["method"]}
        if o["method"] == "full" or not prompt.strip():
            parts = [o["instruction"], prompt, o["question"]]
            return "\n\n".join(p for p in parts if p), stats
        cp = self._engine.compress(prompt, instruction=o["instruction"], question=o["question"],
                                   budget=o["budget"], ratio=o["ratio"])
        stats.update(original_tokens=cp.original_tokens, compressed_tokens=cp.compressed_tokens,
                     token_counts="draft tokenizer", seconds=dict(cp.seconds), kept_spans=cp.kept_spans)
        return cp.text, stats

    def _wrapped_kwargs(self, o: dict) -> dict:
        """Unknown per-call kwargs, plus decoding settings set explicitly (at construction or per call)."""
        fw = dict(o["extra"])
        for name in ("max_tokens", "temperature", "top_p", "top_k", "seed"):
            if name in o["given"] or name in self.model_fields_set:
                fw[name] = o[name]
        return fw

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
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
            generations.append([Generation(text=text, generation_info={"model_name": self.model_name,
                                                                       "draft_rag": stats})])
        return LLMResult(generations=generations, llm_output={"model_name": self.model_name})

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
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
            yield _emit(GenerationChunk(text=text, generation_info=info), run_manager)
            first = False

    async def _astream(self, prompt: str, stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[GenerationChunk]:
        """The whole sync stream runs in one worker thread; the event loop only receives its chunks."""
        async for chunk in common.iterate_in_thread(lambda: self._stream(prompt, stop, None, **kwargs)):
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


def _emit(chunk: GenerationChunk, run_manager) -> GenerationChunk:
    if run_manager:
        run_manager.on_llm_new_token(chunk.text, chunk=chunk)
    return chunk
