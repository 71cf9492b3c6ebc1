"""LlamaIndex node postprocessor of draft-rag: ``DraftNodePostprocessor``."""

from llama_index.postprocessor.draft_rag.base import DraftNodePostprocessor

__all__ = ["DraftNodePostprocessor"]
