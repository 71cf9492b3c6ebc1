"""LangChain integration for draft-rag: draft-guided prompt compression in chat models, LLMs and retrievers."""
from .chat_models import ChatDraftCompressed
from .document_compressors import DraftDocumentCompressor
from .llms import DraftCompressedLLM

__all__ = ["ChatDraftCompressed", "DraftCompressedLLM", "DraftDocumentCompressor"]
