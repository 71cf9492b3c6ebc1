"""DraftCompressedLLM: a LangChain text-completion LLM that compresses its prompt with a draft model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.language_models import BaseLanguageModel, BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import model_validator

from draft_rag.adapters import front_prompt, prompt_input

from . import _common as common


class DraftCompressedLLM(common.DraftSettings, BaseLLM):
    """Completion LLM with draft-guided prompt compression: SpecPC in front of any LangChain LLM, or a local target.

    Setup and settings: as ``ChatDraftCompressed`` (``llm`` is any LangChain language model; ``max_tokens`` is the
    output limit in both classes); docs/langchain.md has the whole page.

    How a prompt is read: laid out by ``draft_rag.messages``'s rule, as a chat message would be (``Context:`` is
    compressible; ``Question:``, ``Answer:``, ``Instructions:``, the first paragraph and the question at the end are
    kept word for word; prompts shorter than 1200 characters are all context). Per call, ``question=`` (and
    ``instruction=``) make the whole prompt context, with them appended (prepended) and kept.

    Instantiate and invoke:
        .. code-block:: python

            from langchain_core.prompts import PromptTemplate
            from langchain_openai import OpenAI
            from langchain_draft_rag import DraftCompressedLLM

            llm = DraftCompressedLLM(llm=OpenAI(model="gpt-3.5-turbo-instruct"), ratio=0.25)
            chain = PromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}\nAnswer:") | llm
            answer = chain.invoke({"context": docs, "question": q})  # also stream, ainvoke, astream
            result = llm.generate([prompt])  # result.generations[0][0].generation_info["draft_rag"]: the stats
    """

    model_config = common.CONFIG

    @model_validator(mode="after")
    def _setup(self) -> DraftCompressedLLM:
        self._check_settings(BaseLanguageModel, "LangChain model", "LangChain language model")
        return self

    @property
    def _llm_type(self) -> str:
        return "draft-rag"

    def _stream_local(self, options, run_manager, parts: dict) -> Iterator[GenerationChunk]:
        def last(piece: str, reply) -> GenerationChunk:
            info = {"finish_reason": reply.stats.finish_reason, "model_name": self.model_name}
            info["draft_rag"] = reply.stats.to_dict()
            if reply.compressed is not None:
                info["draft_rag"]["compressed_text"] = reply.compressed.text
            return GenerationChunk(text=piece, generation_info=info)

        return self._local(options, run_manager, lambda piece: GenerationChunk(text=piece), last, prompt=parts["input"])

    def _compress(self, prompt: str, options, parts: dict) -> tuple[str, dict]:
        """SpecPC on the prompt (``draft_rag.adapters.front_prompt``); sent whole with ``method="full"``."""
        if prompt.strip():
            shortened, stats = common.front(self, self.llm, front_prompt, options, prompt=parts["input"])
        else:
            shortened, stats = None, {"method": options.method, "budget_reason": "an empty prompt: nothing to compress"}
        if shortened is None:
            return "\n\n".join(p for p in (parts["instruction"], prompt, parts["question"]) if p), stats
        return shortened.text, stats

    def _request(self, prompt: str, stop, kwargs: dict, run_manager) -> tuple:
        """``_call``'s options and wrapped kwargs, and the prompt's parts: the per-call ``question`` /
        ``instruction`` and the engine's input (``draft_rag.adapters.prompt_input``)."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        kwargs = dict(kwargs)
        parts = {"question": kwargs.pop("question", None), "instruction": kwargs.pop("instruction", None)}
        parts["input"] = prompt_input(prompt, parts["question"], parts["instruction"])
        return *self._call(stop, kwargs, run_manager), parts

    def _generate(self, prompts: list[str], stop=None, run_manager=None, **kwargs: Any) -> LLMResult:
        generations = []
        for prompt in prompts:
            options, wrapped, parts = self._request(prompt, stop, kwargs, run_manager)
            if self.llm is None:
                chunks = list(self._stream_local(options, run_manager, parts))
                text, info = "".join(c.text for c in chunks), chunks[-1].generation_info
            else:
                compressed, stats = self._compress(prompt, options, parts)
                out = self.llm.invoke(compressed, **wrapped)
                text, info = (
                    (out if isinstance(out, str) else out.text),
                    {"model_name": self.model_name, "draft_rag": stats},
                )
            generations.append([Generation(text=text, generation_info=info)])
        return LLMResult(generations=generations, llm_output={"model_name": self.model_name})

    def _stream(self, prompt: str, stop=None, run_manager=None, **kwargs: Any) -> Iterator[GenerationChunk]:
        options, wrapped, parts = self._request(prompt, stop, kwargs, run_manager)
        if self.llm is None:
            yield from self._stream_local(options, run_manager, parts)
            return
        compressed, stats = self._compress(prompt, options, parts)
        for piece in self.llm.stream(compressed, **wrapped):
            info = {"model_name": self.model_name, "draft_rag": stats} if stats else None
            yield common.emit(
                GenerationChunk(text=piece if isinstance(piece, str) else piece.text, generation_info=info), run_manager
            )
            stats = None  # the first chunk carries them

    async def _astream(self, prompt: str, stop=None, run_manager=None, **kwargs: Any) -> AsyncIterator[GenerationChunk]:
        """The whole sync stream runs in one worker thread; the event loop only receives its chunks."""
        async for chunk in common.astream_in_thread(lambda: self._stream(prompt, stop, None, **kwargs), run_manager):
            yield chunk
