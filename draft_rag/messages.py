"""TEMP contract placeholder (issue 16): the real chat API comes from issue 10; drop on merge.

Deliberately minimal: string contents only, the last user message's text is the compressible context.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .specpc import CompressedPrompt


@dataclass
class CompressedMessages:
    messages: list
    stats: dict = field(default_factory=dict)
    compressed: CompressedPrompt | None = None


def compress_messages(engine, messages, *, budget=None, ratio=None) -> CompressedMessages:
    out = [dict(m) for m in messages]
    users = [i for i, m in enumerate(out) if m.get("role") == "user" and isinstance(m.get("content"), str)]
    if not users:
        return CompressedMessages(out, {"original_tokens": None, "compressed_tokens": None, "kept": {}})
    i, t0 = users[-1], time.perf_counter()
    cp = engine.compress(out[i]["content"], budget=budget, ratio=ratio)
    out[i]["content"] = cp.text
    stats = {"original_tokens": cp.original_tokens, "compressed_tokens": cp.compressed_tokens,
             "kept": {i: cp.compressed_tokens / max(cp.original_tokens, 1)}, "seconds": time.perf_counter() - t0}
    return CompressedMessages(out, stats, cp)


def as_prompt(messages) -> str:
    return "\n\n".join(m["content"] for m in messages if isinstance(m.get("content"), str) and m["role"] != "assistant")
