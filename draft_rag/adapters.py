"""What the framework adapters share, framework-neutral: their settings' help texts and checks, the
``GenerationOptions`` a request runs with, SpecPC in front of a wrapped model (with its stats), the chunk
pruners' settings, the local stream's helpers, and an engine's settings as a dict and back. The LangChain and
LlamaIndex packages build on it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import methods
from .aio import iterate_in_thread
from .config import ASSUMED_WINDOW, Budget, SpecKVConfig, SpecPCConfig, chunk_budget, wrapped_budget
from .engine import DEFAULT_CONTEXT_CACHE_MB, DraftEngine, shared_engine
from .inputs import PromptInput
from .models import LoadedModel
from .options import NAMES, GenerationOptions
from .prompt import has_chat_template
from .selection import KeptChunk, PrunedChunks, check_pruning
from .stats import GenerationStats

__all__ = [  # with what the adapters use from other modules, so that they import from here and draft_rag only
    "ASSUMED_WINDOW", "DEFAULT_CONTEXT_CACHE_MB", "HELP", "SENT_WHOLE", "ChunkPruning", "GenerationOptions",
    "KeptChunk", "PrunedChunks", "check_settings", "configs_from_dict", "engine_dict", "front_messages",
    "front_prompt", "has_chat_template", "hold_last", "iterate_in_thread", "options_of", "prompt_input", "rebuild",
    "setting", "shared_engine", "stop_list", "usage", "with_deadline",
]  # fmt: skip

SENT_WHOLE = "method='full': the prompt is sent whole"

HELP = {
    "target": "A local model that answers: a built-in alias ('smollm2-135m-instruct'), a folder, a .gguf or a "
    "Hugging Face hub id (or a loaded draft_rag model). Give this or llm.",
    "llm": "A framework model to send the compressed prompt to (SpecPC in front of it). Give this or target.",
    "draft": "The small model whose attention picks what to keep (same forms as target); default: the target "
    "itself, or the built-in SmolLM2-135M-Instruct.",
    "method": "'specpc' shortens the prompt, 'full' sends it whole; with a local target also the KV methods "
    "('speckv', 'speckv-pc', 'snapkv', ...: draft_rag.methods.NAMES).",
    "budget": "specpc: draft tokens of prompt kept; KV methods: KV entries kept per layer and KV head. 'auto' (also "
    "what no budget means for specpc): fit the context window (see context_window); 'adaptive': as many tokens as "
    "the draft's attention needs, within that window.",
    "context_window": "The window in tokens the prompt is fitted to with no budget, 'auto' or 'adaptive' (LlamaIndex: "
    "minus num_output; also what its metadata reports). Default: the local target's; the wrapped model's: LangChain's "
    "profile['max_input_tokens'], else draft_rag.config.ASSUMED_WINDOW (32768, logged once); LlamaIndex's "
    "metadata.context_window (set this when that is LlamaIndex's default 3900 but the model takes more).",
    "ratio": "Instead of budget: the fraction of the retrieved context KEPT, in (0, 1] (0.25 keeps a quarter; "
    "kvpress's compression_ratio is the fraction removed). KV methods: the fraction of the prompt's KV entries kept.",
    "pc_budget": "speckv-pc: SpecPC's prompt budget in draft tokens (default 2048).",
    "pc_ratio": "speckv-pc: SpecPC's prompt budget as the fraction of the context kept.",
    "lookahead_tokens": "Draft tokens generated as SpecKV's lookahead (default: the output limit).",
    "sparse_prefill": "True: the local target prefills long prompts vertical-slash sparse with "
    "draft_rag.SparsePrefillConfig()'s settings (the paper's; a bool, not a config). Local targets only.",
    "max_tokens": "Most new tokens per answer (LlamaIndex's num_output; its HuggingFaceLLM names it max_new_tokens). "
    "With llm: LangChain forwards it when set; LlamaIndex leaves the output limit to the wrapped LLM's own.",
    "temperature": "Sampling temperature; 0 is greedy.",
    "template": "Prompt wrapping for the local target, 'chat' or 'raw'; default: 'chat' when it has a chat template.",
    "specpc": "A draft_rag.SpecPCConfig for SpecPC's other settings (window_size, kernel_size, layers, coverage, "
    "granularity: whole 'sentence' units by default, 'token' for the paper's token-level selection).",
    "speckv": "A draft_rag.SpecKVConfig for the KV methods' other settings (window_size, lookahead_tokens).",
    "target_kwargs": "draft_rag.load_model options for the target only: device_map, dtype, attn_implementation, "
    "device, model_kwargs.",
    "draft_kwargs": "draft_rag.load_model options for the draft only: device_map, dtype, attn_implementation, "
    "device, model_kwargs.",
    "context_cache_mb": "MiB of the draft's KV kept for contexts read before (follow-up questions over the same "
    "context reuse it); 0 turns it off.",
    "chunk_cache_mb": "MiB of the draft's KV kept per chunk, so that chunks read before, in any order or company, "
    "are not read again (faster; an approximation of the exact pass, see docs/chunk-cache.md); 0 (default): off.",
    # the chunk pruners (LangChain's document compressor, LlamaIndex's node postprocessor)
    "prune_budget": "Draft tokens the kept chunks may fill (whole chunks dropped, best kept first; with "
    "compress_tokens, SpecPC inside them). 'auto': fit context_window. None: keep by top_n / threshold only.",
    "prune_ratio": "Instead of budget: the fraction of the chunks' draft tokens kept, in (0, 1] (0.25 keeps a "
    "quarter).",
    "prune_window": "With budget='auto': the tokens of the LLM's prompt the kept chunks may fill (its window minus "
    "the template, query and answer).",
    "top_n": "Keep at most this many chunks.",
    "threshold": "Drop chunks whose draft score is below this.",
    "compress_tokens": "Meet budget / ratio with token-level SpecPC inside the kept chunks instead of dropping "
    "whole ones.",
    "instruction": "Task text the draft reads before the chunks.",
    "prune_specpc": "A draft_rag.SpecPCConfig for the draft's scoring pass and, with compress_tokens=True, what is "
    "kept whole (granularity, default 'sentence').",
}
"""One help text per adapter setting, the description of the fields of the same name in both frameworks."""

_CHECKS = {
    "pc_budget": {"ge": 1, "strict": True},
    "context_window": {"ge": 1, "strict": True},
    "pc_ratio": {"gt": 0, "le": 1, "allow_inf_nan": False},
    "ratio": {"gt": 0, "le": 1, "allow_inf_nan": False},
    "prune_ratio": {"gt": 0, "le": 1, "allow_inf_nan": False},
    "prune_window": {"ge": 1, "strict": True},
    "lookahead_tokens": {"ge": 0, "strict": True},
    "max_tokens": {"ge": 1, "strict": True},
    "top_n": {"ge": 1, "strict": True},
    "sparse_prefill": {"strict": True},
    "temperature": {"ge": 0, "allow_inf_nan": False},
    "threshold": {"allow_inf_nan": False},
    "context_cache_mb": {"ge": 0, "allow_inf_nan": False},
    "chunk_cache_mb": {"ge": 0, "allow_inf_nan": False},
}
_DEFAULTS = {
    "method": "specpc",
    "max_tokens": 256,
    "temperature": 0.0,
    "compress_tokens": False,
    "context_cache_mb": DEFAULT_CONTEXT_CACHE_MB,
    "chunk_cache_mb": 0,
}


def engine_of(adapter, target=None, draft=None):
    """The shared ``DraftEngine`` for ``target`` and ``draft`` with the adapter's engine settings (those it has)."""
    names = ("specpc", "speckv", "target_kwargs", "draft_kwargs", "context_cache_mb", "chunk_cache_mb")
    return shared_engine(target, draft, **{n: getattr(adapter, n) for n in names if hasattr(adapter, n)})


def setting(name: str, **overrides) -> dict:
    """The keyword arguments of a pydantic ``Field`` for the setting ``name``: its default, checks and help text."""
    return {"default": _DEFAULTS.get(name), **_CHECKS.get(name, {}), "description": HELP[name], **overrides}


def check_settings(method: str, wrapped: bool, sparse_prefill=None, budget=None, ratio=None) -> None:
    """The checks an adapter runs on its settings; ``wrapped``: SpecPC in front of another model (``llm=``)."""
    m = methods.get(method)
    if wrapped and not m.works_remote:
        raise ValueError(
            f"method={method!r} needs a local target; with llm=... method must be one of {methods.REMOTE_NAMES} "
            "(the wrapped model does its own prefill)"
        )
    if wrapped and sparse_prefill:
        raise ValueError("sparse_prefill=True needs a local target (target=...); llm=... prefills itself")
    Budget.parse(budget, ratio)


def options_of(settings: Any, **changes) -> GenerationOptions:
    """The ``GenerationOptions`` of an adapter's settings (each attribute named as an option), then ``changes``."""
    own = {n: getattr(settings, n) for n in NAMES if getattr(settings, n, None) is not None}
    return GenerationOptions(**own).replace(**changes)


# -- SpecPC in front of a wrapped model ------------------------------------------------------------
def front_prompt(engine: DraftEngine, method: str, budget, ratio, window: int | None, source: str, **parts):
    """SpecPC on a prompt (``engine.compress``'s ``parts``) for a wrapped model whose input window is ``window``
    tokens (``source``: where that was read; None: unknown): the ``CompressedPrompt`` (None when ``method`` does not
    shorten prompts) and the stats a response carries (``config.wrapped_budget``'s note on the budget)."""
    if not methods.get(method).shortens_prompt:
        return None, {"method": method, "budget_reason": SENT_WHOLE}
    kwargs, note = wrapped_budget(budget, ratio, engine.specpc, window, source)
    shortened = engine.compress(**parts, **kwargs)
    stats = {"method": method, **note, "original_tokens": shortened.original_tokens}
    stats.update(compressed_tokens=shortened.compressed_tokens, token_counts="draft tokenizer")
    stats.update(seconds=dict(shortened.seconds), kept_spans=shortened.kept_spans)
    if shortened.left_whole:
        stats["left_whole"] = shortened.left_whole
    return shortened, stats


def front_messages(engine: DraftEngine, method: str, budget, ratio, window, source: str, messages, **parts):
    """``front_prompt`` for a conversation (OpenAI-style dicts; ``engine.compress_messages``): the
    ``CompressedMessages`` (None: sent whole) and the stats."""
    if not methods.get(method).shortens_prompt:
        return None, {"method": method, "messages": [], "budget_reason": SENT_WHOLE}
    kwargs, note = wrapped_budget(budget, ratio, engine.specpc, window, source)
    compressed = engine.compress_messages(messages, **kwargs, **parts)
    return compressed, {"method": method, **note, **compressed.stats.to_dict()}


def rebuild(messages: list, compressed, with_content) -> list:
    """A framework's ``messages`` after ``compress_messages`` (a ``CompressedMessages``; None: as they are), each
    changed one as ``with_content(message, its new content)``."""
    if compressed is None:
        return list(messages)
    changed = compressed.stats.changed()
    return [with_content(m, compressed.messages[i]["content"]) if i in changed else m for i, m in enumerate(messages)]


def prompt_input(prompt: str, question: str | None = None, instruction: str | None = None) -> PromptInput:
    """A plain prompt's input: laid out by ``draft_rag.messages``'s rule (its ``Question:`` and instructions
    protected), or, with ``question`` / ``instruction``, all context between them."""
    if question is None and instruction is None:
        return PromptInput(prompt or None, split=True)
    return PromptInput(prompt or None, instruction=instruction, question=question)


# -- chunk pruning ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChunkPruning:
    """A chunk pruner's settings (``HELP``'s ``prune_*``, ``top_n``, ...), checked where it is built.

    ``tokens``/``reason``: the draft-token budget ``budget``/``context_window`` come to and why, in words
    (``config.chunk_budget``); ``prune`` runs ``DraftEngine.prune_chunks`` with them.
    """

    budget: int | str | None = None
    ratio: float | None = None
    context_window: int | None = None
    top_n: int | None = None
    threshold: float | None = None
    compress_tokens: bool = False
    instruction: str | None = None
    tokens: int | None = field(init=False, default=None)
    reason: str = field(init=False, default="")

    def __post_init__(self):
        tokens, reason = chunk_budget(self.budget, self.ratio, self.context_window)
        check_pruning(self.top_n, self.threshold, tokens, self.ratio, self.compress_tokens)
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "reason", reason)

    def prune(self, engine: DraftEngine, texts: list[str], query: str, **more) -> tuple[PrunedChunks, dict]:
        """``engine.prune_chunks`` on ``texts`` (``more``: e.g. ``score_texts``), and its stats."""
        pruned = engine.prune_chunks(
            texts, query, instruction=self.instruction, top_n=self.top_n, threshold=self.threshold,
            budget=self.tokens, ratio=self.ratio, compress_tokens=self.compress_tokens, **more,
        )  # fmt: skip
        stats = {
            "method": "specpc" if pruned.compressed is not None else "specpc-chunks",
            "original_tokens": pruned.original_tokens,
            "compressed_tokens": pruned.compressed_tokens,
            "seconds": pruned.seconds,
            "budget_reason": self.reason,
        }
        return pruned, stats

    def warm(self, engine: DraftEngine, texts: list[str]) -> int:
        """Read ``texts`` into ``engine``'s chunk cache as ``prune`` will read them (``DraftEngine.warm_chunks``)."""
        return engine.warm_chunks([t for t in texts if t.strip()], instruction=self.instruction)


# -- an engine's settings as a dict, and a framework's stop strings --------------------------------
def model_ref(loaded: LoadedModel) -> str:
    """The string ``load_model`` reloads ``loaded`` from: what was asked for, else the checkpoint's name_or_path."""
    if loaded.name != LoadedModel._field_defaults["name"]:
        return loaded.name
    return getattr(loaded.model.config, "name_or_path", "") or loaded.name


def engine_dict(engine: DraftEngine, *keys: str) -> dict:
    """``keys`` among target, draft, specpc, speckv: models as reference strings, configs as plain dicts (what an
    adapter's ``to_dict`` holds of its engine)."""
    values = {"target": engine.target, "draft": engine.draft, "specpc": engine.specpc, "speckv": engine.speckv}
    return {k: model_ref(values[k]) if k in ("target", "draft") else dataclasses.asdict(values[k]) for k in keys}


def configs_from_dict(data: dict) -> dict:
    """A copy of ``data`` whose ``specpc``/``speckv`` dicts are config objects again (an adapter's ``from_dict``)."""
    configs = {"specpc": SpecPCConfig, "speckv": SpecKVConfig}
    return {k: configs[k](**v) if k in configs and isinstance(v, dict) else v for k, v in data.items()}


def stop_list(stop: Any) -> list[str]:
    """Normalise a framework's ``stop`` (None, a string or a list of strings)."""
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else list(stop)
    if any(not isinstance(s, str) or not s for s in stop):
        raise ValueError(f"stop must be a list of non-empty strings, got {stop!r}")
    return stop


# -- the local stream ------------------------------------------------------------------------------
def hold_last(pieces: Iterator[str]) -> Iterator[tuple[str, bool]]:
    """``(piece, is_last)`` pairs, one piece held back so the last can carry the stats; ``("", True)`` for none."""
    held = None
    for piece in pieces:
        if held is not None:
            yield held, False
        held = piece
    yield held or "", True


def with_deadline(pieces: Iterator[str], timeout: float | None) -> Iterator[str]:
    """Pass pieces through; raise ``TimeoutError`` once ``timeout`` seconds have passed (checked per piece). The
    pieces are closed when this stops (the engine lock is freed)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        for piece in pieces:
            yield piece
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"generation took longer than timeout={timeout} seconds")
    finally:
        close = getattr(pieces, "close", None)
        if close:
            close()


def usage(stats: GenerationStats) -> dict:
    """OpenAI-style token usage of a local generation (target tokens, chat template included)."""
    total = stats.prompt_tokens + stats.new_tokens
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.new_tokens, "total_tokens": total}
