"""LlamaIndex LLM integration of draft-rag: ``DraftCompressedLLM`` and its ``DraftCompressionEvent``."""

from llama_index.llms.draft_rag.base import DraftCompressedLLM
from llama_index.llms.draft_rag.events import DraftCompressionEvent

__all__ = ["DraftCompressedLLM", "DraftCompressionEvent"]
