"""LlamaIndex node postprocessor of draft-rag: ``DraftNodePostprocessor``, and ``DraftChunkWarmer`` for ingestion."""

from llama_index.postprocessor.draft_rag.base import DraftChunkWarmer, DraftNodePostprocessor

__all__ = ["DraftChunkWarmer", "DraftNodePostprocessor"]
