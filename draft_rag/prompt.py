"""Prompt layout: segments with roles, safe tokenisation and chat-template wrapping.

Only chat-template parts are tokenised with special tokens; every other segment (instructions,
retrieved chunks, questions) is untrusted text, so ``<|im_start|>`` or ``<bos>`` inside it stays text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

PROTECTED_ROLES = ("instruction", "question", "answer_prefix", "separator", "template")
CHUNK_SEPARATOR = "\n\n"


@dataclass
class Chunk:
    """A retrieved passage: text plus the caller's id and metadata, carried through untouched."""

    text: str
    id: Any = None
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Segment:
    text: str
    role: str
    chunk: int | None = None  # index into the chunk list for role "context"

    @property
    def protected(self) -> bool:
        return self.role != "context"

    @property
    def in_output(self) -> bool:
        """Template parts belong to one model's wrapping, not to the prompt text itself."""
        return self.role != "template"


def as_chunks(chunks: Iterable) -> list[Chunk]:
    """Accept strings, ``Chunk`` objects or dicts with ``text`` (and optional ``id``/``metadata``)."""
    out = []
    for i, c in enumerate(chunks):
        if isinstance(c, Chunk):
            out.append(c)
        elif isinstance(c, str):
            out.append(Chunk(c, id=i))
        elif isinstance(c, dict) and isinstance(c.get("text"), str):
            out.append(Chunk(c["text"], id=c.get("id", i), metadata=dict(c.get("metadata") or {})))
        else:
            raise TypeError(
                f"chunks[{i}] must be a str, a Chunk or a dict with a 'text' string, got {type(c).__name__}"
            )
    return out


def build_segments(
    prompt: str | None = None,
    *,
    chunks=None,
    instruction: str | None = None,
    question: str | None = None,
    answer_prefix: str | None = None,
) -> tuple[list[Segment], list[Chunk]]:
    """Lay out instruction, context (a prompt string or chunks), question and answer prefix as segments."""
    if prompt is not None and chunks is not None:
        raise ValueError("give either prompt (one text) or chunks (a list of passages), not both")
    for name, value in (
        ("prompt", prompt),
        ("instruction", instruction),
        ("question", question),
        ("answer_prefix", answer_prefix),
    ):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    chunk_list = as_chunks(chunks) if chunks is not None else ([Chunk(prompt, id=0)] if prompt else [])
    segments: list[Segment] = []

    def add(text: str, role: str, chunk: int | None = None) -> None:
        if segments and role != "answer_prefix":
            segments.append(Segment(CHUNK_SEPARATOR, "separator"))
        segments.append(Segment(text, role, chunk))

    if instruction:
        add(instruction, "instruction")
    for i, c in enumerate(chunk_list):
        if c.text:
            add(c.text, "context", i)
    if question:
        add(question, "question")
    if answer_prefix:
        add(answer_prefix, "answer_prefix")
    if not segments:
        raise ValueError("nothing to compress: prompt, chunks and question are all empty")
    return segments, chunk_list


_SENTINEL = "\u2063DRAFTRAGCONTENT\u2063"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def template_parts(tokenizer, template: str = "chat", system: str | None = None) -> tuple[str, str]:
    """Text that wraps one user turn: ``(prefix, suffix)``, rendered by the tokenizer's chat template.

    With ``template="raw"`` only the tokenizer's own leading special tokens (e.g. ``<bos>``) are added.
    """
    if template not in ("chat", "raw"):
        raise ValueError(f"template must be 'chat' or 'raw', got {template!r}")
    if template == "raw" or not has_chat_template(tokenizer):
        lead = tokenizer("", add_special_tokens=True)["input_ids"]
        return tokenizer.decode(lead) if lead else "", ""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": _SENTINEL}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prefix, _, suffix = rendered.partition(_SENTINEL)
    return prefix, suffix


def wrap(segments: list[Segment], tokenizer, template: str = "chat", system: str | None = None) -> list[Segment]:
    """Put the segments in one user turn; an answer prefix goes after the turn, as the model's reply begins."""
    prefix, suffix = template_parts(tokenizer, template, system)
    body = [s for s in segments if s.role != "answer_prefix"]
    tail = [s for s in segments if s.role == "answer_prefix"]
    return (
        ([Segment(prefix, "template")] if prefix else [])
        + body
        + ([Segment(suffix, "template")] if suffix else [])
        + tail
    )


@dataclass
class Tokenized:
    """Token ids of a segment list, with each token's segment and character span inside it."""

    ids: list[int]
    segment: list[int]
    offsets: list[tuple[int, int]]


def tokenize(tokenizer, segments: list[Segment]) -> Tokenized:
    ids, seg, offs = [], [], []
    for s_idx, s in enumerate(segments):
        if not s.text:
            continue
        enc = tokenizer(
            s.text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=s.role != "template"
        )
        ids += enc["input_ids"]
        seg += [s_idx] * len(enc["input_ids"])
        offs += [tuple(o) for o in enc["offset_mapping"]]
    return Tokenized(ids, seg, offs)


def encode(tokenizer, text: str, template: str = "chat", system: str | None = None) -> list[int]:
    """Token ids of untrusted ``text`` as one user turn (or raw), special tokens only from the template."""
    return tokenize(tokenizer, wrap([Segment(text, "context")], tokenizer, template, system)).ids


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]) if text else 0
