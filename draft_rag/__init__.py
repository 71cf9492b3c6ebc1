"""draft-rag: a small draft model decides which tokens, chunks and KV entries a big target needs."""

from .config import SpecKVConfig, SpecPCConfig
from .engine import DraftEngine, Generation, GenerationStats
from .messages import CompressedMessages
from .models import LoadedModel, load_model
from .prompt import Chunk
from .specpc import ChunkResult, CompressedPrompt

__all__ = [
    "Chunk",
    "ChunkResult",
    "CompressedMessages",
    "CompressedPrompt",
    "DraftEngine",
    "Generation",
    "GenerationStats",
    "LoadedModel",
    "SpecKVConfig",
    "SpecPCConfig",
    "load_model",
]
__version__ = "0.1.0"
