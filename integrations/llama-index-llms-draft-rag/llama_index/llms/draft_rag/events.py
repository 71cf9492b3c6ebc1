"""LlamaIndex instrumentation event sent whenever draft-rag compresses or prunes something."""

from __future__ import annotations

from typing import Optional

from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events import BaseEvent

dispatcher = get_dispatcher(__name__)


class DraftCompressionEvent(BaseEvent):
    """One compression step: token counts before/after, the method and where it ran.

    ``component`` is ``"llm"`` (counts in the target's tokenizer, chat template included, or the draft's
    when wrapping another LLM) or ``"postprocessor"`` (node text in the draft's tokenizer). KV methods
    keep every prompt token and shrink the cache instead: see ``kv_bytes`` against ``kv_bytes_full``.
    """

    component: str
    method: str
    original_tokens: int
    compressed_tokens: int
    seconds: dict = {}
    nodes_in: Optional[int] = None
    nodes_out: Optional[int] = None
    kv_bytes: Optional[int] = None  # local target: KV cache after prefill (KV methods evict entries)
    kv_bytes_full: Optional[int] = None  # what a plain prefill of the same prompt would hold
    budget_reason: Optional[str] = None  # which budget applied and why, in words

    @classmethod
    def class_name(cls) -> str:
        return "DraftCompressionEvent"
