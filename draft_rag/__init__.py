"""draft-rag: a small draft model decides which tokens, chunks and KV entries a big target needs."""

from .config import SparsePrefillConfig, SpecKVConfig, SpecPCConfig
from .engine import DraftEngine
from .inputs import ChatInput, PromptInput
from .messages import CompressedMessages
from .models import LoadedModel, load_model
from .options import GenerationOptions
from .prompt import Chunk
from .specpc import ChunkResult, CompressedPrompt
from .stats import CompressionStats, Generation, GenerationStats, MessageStats

__all__ = [
    "Chunk",
    "ChatInput",
    "ChunkResult",
    "CompressedMessages",
    "CompressedPrompt",
    "CompressionStats",
    "DraftEngine",
    "Generation",
    "GenerationOptions",
    "GenerationStats",
    "LoadedModel",
    "MessageStats",
    "PromptInput",
    "SparsePrefillConfig",
    "SpecKVConfig",
    "SpecPCConfig",
    "load_model",
]
__version__ = "0.1.0"
