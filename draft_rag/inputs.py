"""What a caller asks, before any tokenizer sees it: a prompt (``PromptInput``) or a conversation (``ChatInput``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from . import messages as chat
from .prompt import CHUNK_SEPARATOR, Chunk, Segment, build_segments


@dataclass(frozen=True)
class PromptInput:
    """Retrieved context (one ``prompt`` text or ``chunks``) between protected instruction, question and answer
    prefix; ``system`` is the chat template's system prompt. Checked on creation.

    ``split=True``: a ``prompt`` given alone is laid out by ``draft_rag.messages``'s rule (``prompt_segments``:
    ``Context:`` / ``Question:`` labels, the question and instructions protected) instead of being all context;
    the completion adapters use it. A prompt in which the rule finds no context stays all context. ``reread``:
    the question such a prompt asks before its context, which the draft reads again at the end.
    """

    prompt: str | None = None
    chunks: Sequence | None = None
    instruction: str | None = None
    question: str | None = None
    answer_prefix: str | None = None
    system: str | None = None
    split: bool = False
    segments: list[Segment] = field(init=False, repr=False, compare=False)
    chunk_list: list[Chunk] = field(init=False, repr=False, compare=False)
    reread: str | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self):
        segments, chunk_list, reread = self._split() if self.split else ([], [], None)
        object.__setattr__(self, "reread", reread)
        if not segments:
            segments, chunk_list = build_segments(
                self.prompt,
                chunks=self.chunks,
                instruction=self.instruction,
                question=self.question,
                answer_prefix=self.answer_prefix,
            )
        object.__setattr__(self, "segments", segments)
        object.__setattr__(self, "chunk_list", chunk_list)

    def _split(self) -> tuple[list[Segment], list[Chunk], str | None]:
        if self.chunks is not None or self.instruction or self.question or self.answer_prefix:
            raise ValueError("split=True lays out a prompt given alone; give chunks/instruction/question without it")
        return chat.prompt_segments(self.prompt) if isinstance(self.prompt, str) else ([], [], None)

    def draft_segments(self) -> list[Segment]:
        """What the draft reads: the segments, then (``split`` prompts that ask before their context) the question
        once more, so that its window queries are the question; ``pipeline.without_reread`` drops it again."""
        if not self.reread:
            return self.segments
        return self.segments + [Segment(CHUNK_SEPARATOR, "separator"), Segment(self.reread, "question")]


@dataclass(frozen=True)
class ChatInput:
    """OpenAI-style message dicts; ``context``: texts known to be the retrieved context inside them (see
    ``draft_rag.messages``). ``layout`` is which text is context, computed once on creation."""

    messages: list[dict]
    context: list[str] | None = None
    layout: chat.Layout = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "messages", list(self.messages))
        object.__setattr__(self, "layout", chat.layout(self.messages, self.context))


def from_call(
    prompt=None,
    *,
    chunks=None,
    instruction=None,
    question=None,
    answer_prefix=None,
    system=None,
    messages=None,
    context=None,
) -> PromptInput | ChatInput:
    """The input of a ``stream``/``generate`` call, refusing mixed forms with the argument names."""
    if context is not None and messages is None:
        raise ValueError("context=... names retrieved text inside messages=...; give messages too")
    if messages is None:
        return PromptInput(prompt, chunks, instruction, question, answer_prefix, system)
    if prompt is not None or chunks is not None or question is not None or instruction is not None:
        raise ValueError("give messages=... or a prompt (prompt/chunks/instruction/question), not both")
    if system is not None or answer_prefix is not None:
        raise ValueError("with messages=..., put the system prompt and answer prefix in the messages")
    return ChatInput(messages, context)


INPUT_NAMES = ("chunks", "instruction", "question", "answer_prefix", "system", "messages", "context")  # from_call's
