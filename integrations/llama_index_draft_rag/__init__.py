"""LlamaIndex integration of draft-rag: ``DraftCompressedLLM`` and ``DraftNodePostprocessor``."""
from .events import DraftCompressionEvent
from .llm import DraftCompressedLLM
from .postprocessor import DraftNodePostprocessor

__all__ = ["DraftCompressedLLM", "DraftCompressionEvent", "DraftNodePostprocessor"]
