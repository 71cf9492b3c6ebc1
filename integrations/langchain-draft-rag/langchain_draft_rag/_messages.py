"""LangChain messages -> the engine's layout (system, compressible context, question) and back.

Rules: system messages and the last human message (the question) are never compressed. A final AI
message right after it is the start of the answer (an answer prefix), also kept. Every other message is
compressible context, one chunk per message. In front of a wrapped chat model, messages that
carry tool calls, tool results or non-text parts are passed through untouched.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from langchain_core.messages import BaseMessage, ChatMessage

from draft_rag import Chunk

_LABELS = {"ai": "Assistant", "tool": "Tool result", "function": "Function result"}


@dataclass
class Layout:
    """Where each message went. ``context[k].id`` is the index of its message in the input list."""

    system: str | None
    context: list[Chunk]
    question: str | None
    protected: set[int] = field(default_factory=set)  # indices passed through untouched (wrapped mode)
    question_index: int | None = None
    answer_prefix: str | None = None


def role(message: BaseMessage) -> str:
    """'system', 'human', 'ai', 'tool', 'function' or a ChatMessage's own role (lower-cased)."""
    if isinstance(message, ChatMessage):
        r = message.role.lower()
        return {"user": "human", "assistant": "ai", "developer": "system"}.get(r, r)
    return message.type


def text_of(message: BaseMessage, index: int) -> tuple[str, bool]:
    """The message's text and whether it had only text parts (False: images, audio, ... present)."""
    content = message.content
    if isinstance(content, str):
        return content, True
    if not isinstance(content, list):
        raise TypeError(f"messages[{index}].content must be a string or a list of parts, got {type(content).__name__}")
    texts, only_text = [], True
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            only_text = False
    return "".join(texts), only_text


def _non_text_error(index: int, message: BaseMessage) -> ValueError:
    kinds = sorted({p.get("type", "?") if isinstance(p, dict) else type(p).__name__
                    for p in message.content if not isinstance(p, str) and not (
                        isinstance(p, dict) and p.get("type") == "text")})
    return ValueError(f"messages[{index}] has non-text parts {kinds}; a local target reads text only "
                      "(wrap a multimodal chat model with llm=... to pass them through)")


def split(messages: list[BaseMessage], wrapped: bool) -> Layout:
    """Sort messages into system text, compressible context chunks and the question.

    ``wrapped=False`` (local target): non-text parts are an error; non-human context messages get a role label.
    ``wrapped=True``: tool traffic and non-text messages are protected and passed through as they are.
    """
    if not messages:
        raise ValueError("messages must not be empty")
    for i, m in enumerate(messages):
        if not isinstance(m, BaseMessage):
            raise TypeError(f"messages[{i}] must be a LangChain message, got {type(m).__name__}")
    last = len(messages) - 1
    prefix_index = None
    if last >= 1 and role(messages[last]) == "ai" and role(messages[last - 1]) == "human" and not getattr(
            messages[last], "tool_calls", None):
        prefix_index, last = last, last - 1
    question_index = last if role(messages[last]) == "human" else None
    layout = Layout(None, [], None, question_index=question_index)
    systems = []
    for i, m in enumerate(messages):
        r = role(m)
        text, only_text = text_of(m, i)
        if not only_text and not wrapped:
            raise _non_text_error(i, m)
        if wrapped and (not only_text or r in ("tool", "function") or getattr(m, "tool_calls", None)):
            layout.protected.add(i)
        elif r == "system":
            systems.append(text)
        elif i == question_index:
            layout.question = text
        elif i == prefix_index:
            if wrapped:
                layout.protected.add(i)
            else:
                layout.answer_prefix = text or None
        elif wrapped or r == "human":
            layout.context.append(Chunk(text, id=i))
        else:
            label = _LABELS.get(r, r.capitalize())
            layout.context.append(Chunk(f"{label}: {text}" if text else "", id=i))
    layout.system = "\n\n".join(s for s in systems if s) or None
    return layout


def rebuild(messages: list[BaseMessage], layout: Layout, texts: dict[int, str]) -> list[BaseMessage]:
    """The input messages with compressed context texts; context messages compressed to nothing are dropped."""
    out = []
    for i, m in enumerate(messages):
        if i not in texts:
            out.append(m)
        elif texts[i]:
            out.append(m.model_copy(update={"content": texts[i]}))
    return out

