"""LangChain integration for draft-rag: draft-guided prompt compression in chat models, LLMs and retrievers."""

from .chat_models import ChatDraftCompressed
from .document_compressors import DraftChunkWarmer, DraftDocumentCompressor
from .llms import DraftCompressedLLM

__all__ = ["ChatDraftCompressed", "DraftChunkWarmer", "DraftCompressedLLM", "DraftDocumentCompressor"]
__all__ += ["DraftCompressionMiddleware"]  # imported on use (below)


def __getattr__(name: str):
    if name == "DraftCompressionMiddleware":  # imported on use: it needs the `langchain` (v1) package
        from .middleware import DraftCompressionMiddleware

        return DraftCompressionMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
