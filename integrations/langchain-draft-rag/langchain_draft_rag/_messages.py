"""LangChain messages <-> the core's OpenAI-style message dicts (``draft_rag.messages`` says what is compressed):
only ``content`` of a message whose retrieved context was compressed is replaced; all else reaches the model as is.
"""

from __future__ import annotations

from langchain_core.messages import BaseMessage, ChatMessage

from draft_rag import adapters

_ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool", "function": "function"}
_CHAT_ROLES = {"human": "user", "ai": "assistant"}


def role(message: BaseMessage) -> str:
    """The message's role in the core's terms ('system', 'user', 'assistant', 'tool', or a ChatMessage's own)."""
    if isinstance(message, ChatMessage):
        r = message.role.lower()
        return _CHAT_ROLES.get(r, r)
    return _ROLES.get(message.type, message.type)


def to_dicts(messages: list[BaseMessage]) -> list[dict]:
    """One ``{"role", "content", ...}`` dict per message (tool calls and tool-call ids included, for templates)."""
    if not messages:
        raise ValueError("messages must not be empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, BaseMessage):
            raise TypeError(f"messages[{i}] must be a LangChain message, got {type(m).__name__}")
        content = m.content
        if isinstance(content, list):
            content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in content]
        d = {"role": role(m), "content": content}
        for key in ("tool_calls", "tool_call_id", "name"):
            if getattr(m, key, None):
                d[key] = getattr(m, key)
        out.append(d)
    return out


def rebuild(messages: list[BaseMessage], compressed) -> list[BaseMessage]:
    """The input messages, with ``content`` replaced where the core compressed it (a ``CompressedMessages``)."""
    return adapters.rebuild(messages, compressed, lambda m, content: m.model_copy(update={"content": content}))
