"""What a request cost and what compression kept: typed results, turned into dicts only at the JSON edge."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .specpc import CompressedPrompt


@dataclass
class MessageStats:
    """One message whose retrieved context SpecPC compressed."""

    message_index: int
    context_tokens: int  # the message's context before compression
    kept_fraction: float  # of those tokens, the share kept


@dataclass
class CompressionStats:
    """SpecPC on a conversation: counts in ``token_counts``'s tokenizer, and which messages changed."""

    token_counts: str  # "target tokenizer" or "draft tokenizer"
    original_tokens: int = 0
    compressed_tokens: int = 0
    draft_original_tokens: int | None = None
    draft_kept_tokens: int | None = None
    draft_blocks: int | None = None
    draft_cached_tokens: int | None = None  # draft tokens whose KV came from the context cache
    seconds: dict = field(default_factory=dict)
    messages: list[MessageStats] = field(default_factory=list)
    warning: str | None = None  # over budget, but nothing in the conversation is compressible
    left_whole: str = ""  # budget="auto": why a conversation that fits the window was not compressed
    unsupported: int | None = None  # statements of the compressed text its source does not make (faithfulness)

    def changed(self) -> set[int]:
        """Indices of the messages whose content changed."""
        return {m.message_index for m in self.messages}

    def to_dict(self) -> dict:
        """JSON-able, without the fields a run did not set (``left_whole`` only when a conversation was)."""
        return {k: v for k, v in asdict(self).items() if v is not None and (k != "left_whole" or v)}


@dataclass
class GenerationStats:
    """Token counts are in the target's tokenizer and include its chat template."""

    method: str
    original_tokens: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    finish_reason: str = ""
    seconds: dict = field(default_factory=dict)
    kv_bytes: int = 0  # target KV cache after prefill (all layers, keys + values)
    kv_bytes_full: int = 0  # what a plain prefill of the same prompt holds
    kv_entries: list = field(default_factory=list)  # cache entries per KV head, per layer, after prefill
    lookahead_tokens: int = 0  # draft tokens the target prefilled as SpecKV's lookahead (target tokenizer)
    draft_blocks: int = 0  # SpecPC's draft passes over the prompt (>1: scored in blocks; 0: not run)
    draft_cached_tokens: int = 0  # draft tokens (SpecPC's pass, SpecKV's lookahead) whose KV came from the cache
    sparse_layers: int = 0  # target layers whose prefill ran vertical-slash sparse (sparse_prefill=)
    unsupported: int = 0  # statements of SpecPC's kept text that its source does not make (draft_rag.faithfulness)
    left_whole: str = ""  # budget="auto": why a prompt that fits the window was not compressed
    budget_reason: str = ""  # which budget applied and why, in words
    compression: CompressionStats | None = None  # SpecPC on a conversation (messages=...)

    def usage(self) -> dict:
        """OpenAI-style token usage."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.new_tokens,
            "total_tokens": self.prompt_tokens + self.new_tokens,
        }

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out["compression"] = self.compression.to_dict() if self.compression else {}
        return out


@dataclass
class Generation:
    text: str
    stats: GenerationStats
    compressed: CompressedPrompt | None = None


class GenerationStream:
    """Iterator of text pieces; ``stats`` and ``compressed`` are complete once it is exhausted."""

    def __init__(self, pieces: Iterator[str], stats: GenerationStats, compressed: CompressedPrompt | None = None):
        self.pieces, self.stats, self.compressed = pieces, stats, compressed

    def __iter__(self):
        return self.pieces
