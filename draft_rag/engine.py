"""DraftEngine: prompt -> [SpecPC with the draft] -> local target generation, with stats.

The one place the adapters, the CLI, the server and the bench call. Thread-safe: the engine's lock is held only
while a step computes (a compression, a stream's preparation and prefill, one decoded token), never between a
stream's pieces, so an abandoned or unfinished stream never blocks other calls, from this thread or any other.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from . import messages as chat
from . import methods
from .blocks import block_size_for, score_blocks
from .budgets import specpc_for
from .builtins import DEFAULT_MODEL
from .chunk_cache import ChunkCache
from .config import Budget, SparsePrefillConfig, SpecKVConfig, SpecPCConfig, check_int
from .context_cache import ContextCache
from .generation import stream
from .inputs import INPUT_NAMES, ChatInput, PromptInput, from_call
from .models import LoadedModel, context_window, load_model, load_options
from .options import GenerationOptions, Plan
from .payoff import Costs
from .pipeline import Drafted, Prepared, compress_conversation, compress_prompt, prepare
from .prompt import has_chat_template, tokenize, wrap
from .scoring import chunk_scores
from .selection import PrunedChunks, prune_chunks
from .specpc import CompressedPrompt
from .stats import Generation, GenerationStats, GenerationStream

METHODS = methods.NAMES  # every method the engine runs; ``methods.REGISTRY`` says what each does
DEFAULT_CONTEXT_CACHE_MB = 1024  # draft KV kept for contexts read before (SmolLM2-135M: about 23k tokens)


class DraftEngine:
    """Draft-guided compression and generation.

    ``target=None`` gives a compression-only engine (e.g. in front of a remote LLM). ``draft`` defaults
    to the target itself when given, else to the built-in SmolLM2; one loaded model may serve as both.

    Args:
        target: the model that answers: anything ``load_model`` accepts (alias, path, hub id, loaded model).
        draft: the small model whose attention guides compression (same forms).
        specpc: SpecPC settings (window, pooling, budget); defaults to ``SpecPCConfig()``.
        method: default generation method, one of ``METHODS``.
        device, dtype, device_map, attn_implementation: ``load_model`` options for both models.
        speckv: SpecKV settings for the KV methods; defaults to ``SpecKVConfig()``.
        target_kwargs, draft_kwargs: ``load_model`` options for one model only, overriding the shared
            ones, e.g. ``target_kwargs={"device_map": "auto", "model_kwargs": {"quantization_config": q}}``.
        threads: torch's CPU threads for the whole process (``torch.set_num_threads``; on a busy machine
            1 is often fastest).
        block_size: the most draft tokens per draft pass (default ``blocks.DEFAULT_BLOCK_SIZE``, capped at the
            draft's window); longer prompts are scored in blocks.
        context_cache_mb: MiB of draft KV kept for contexts read before, so that a follow-up question over the
            same context runs only its own tokens (and the last window of context) through the draft; 0 turns
            it off (``context_cache.ContextCache``).
        chunk_cache_mb: MiB of draft KV kept per chunk, so that chunks read before (in any order or company) are not
            read again: faster, an approximation of the exact pass (``chunk_cache.ChunkCache``); 0 (default): off.
        sparse_prefill: the target prefills long prompts vertical-slash sparse, as the paper's SpecKV does (True:
            ``SparsePrefillConfig()``, or a config); per call, ``stream(sparse_prefill=...)`` overrides it.
        costs: the draft's and target's seconds per prompt length (``payoff.Costs``) by which ``budget="auto"``
            decides whether compressing a prompt that fits the window pays; default: measured at first need.
    """

    def __init__(
        self,
        target=None,
        draft=None,
        *,
        specpc: SpecPCConfig | None = None,
        method: str = "specpc",
        device: str | None = None,
        dtype=None,
        speckv: SpecKVConfig | None = None,
        device_map=None,
        attn_implementation: str | None = None,
        target_kwargs: dict | None = None,
        draft_kwargs: dict | None = None,
        threads: int | None = None,
        block_size: int | None = None,
        context_cache_mb: float = DEFAULT_CONTEXT_CACHE_MB,
        chunk_cache_mb: float = 0,
        sparse_prefill: bool | SparsePrefillConfig | None = None,
        costs: Costs | None = None,
    ):
        methods.get(method)
        set_threads(threads)
        shared = dict(device=device, dtype=dtype, device_map=device_map, attn_implementation=attn_implementation)
        shared = {k: v for k, v in shared.items() if v is not None}
        t_opts = _options(shared, target_kwargs, "target_kwargs")
        d_opts = _options(shared, draft_kwargs, "draft_kwargs")
        self.target: LoadedModel | None = load_model(target, **t_opts) if target is not None else None
        if draft is None:
            self.draft = self.target or load_model(DEFAULT_MODEL, **d_opts)
        else:
            self.draft = load_model(draft, **d_opts)
        self.specpc = specpc or SpecPCConfig()
        self.speckv = speckv or SpecKVConfig()
        self.method = method
        self.draft_window = context_window(self.draft.model)  # None: the config does not say
        self.target_window = context_window(self.target.model) if self.target else None
        self.block_size = block_size_for(self.draft.model, block_size)
        self.context_cache = ContextCache(context_cache_mb)
        self.chunk_cache = ChunkCache(chunk_cache_mb)
        self.sparse_prefill = SparsePrefillConfig.parse(sparse_prefill)
        self.costs = costs
        self._lock = threading.Lock()  # held per step only (see the module docstring)

    @property
    def count_tokenizer(self):
        """The tokenizer that counts prompt tokens: the target's, or the draft's without a target."""
        return self.target.tokenizer if self.target else self.draft.tokenizer

    # -- compression ---------------------------------------------------------------------------
    def compress(
        self,
        prompt: str | PromptInput | None = None,
        *,
        chunks=None,
        instruction: str | None = None,
        question: str | None = None,
        answer_prefix: str | None = None,
        budget: int | str | None = None,
        ratio: float | None = None,
        template: str = "chat",
        context_window: int | None = None,
    ) -> CompressedPrompt:
        """SpecPC on a prompt string or on chunks; protected segments are always kept.

        Args:
            prompt: the text to compress (all of it compressible), or None when ``chunks`` are given; or a
                ``PromptInput`` carrying the whole input (``PromptInput(text, split=True)``: the text laid out by
                ``draft_rag.messages``'s rule, its question and instructions protected).
            chunks: retrieved passages (strings or ``Chunk``), compressed each with its own provenance.
            instruction, question, answer_prefix: protected text, kept word for word.
            budget, ratio: the prompt budget in draft tokens, or as a fraction of the prompt; they override
                the engine's SpecPCConfig for this call. ``budget="auto"`` keeps as much as fits ``context_window``
                tokens (default: the target's window), with a small margin for re-tokenisation; a prompt that
                fits is compressed to the engine's own budget (adaptive when it has none) only when that pays
                (``draft_rag.payoff``), else left whole and ``left_whole`` says why.
                ``budget="adaptive"`` keeps as much as the draft's attention needs (``SpecPCConfig.coverage``,
                default ``DEFAULT_COVERAGE``), never more than fits ``context_window`` when there is one.
            context_window: the window ``budget="auto"`` fits (default: the target's).
            template: ``"chat"`` (the draft's chat template) or ``"raw"``.

        Returns:
            A ``CompressedPrompt``: the kept text, per-chunk results and token counts (in the target's
            tokenizer when the engine has a target).
        """
        if not isinstance(prompt, PromptInput):
            prompt = PromptInput(prompt, chunks, instruction, question, answer_prefix)
        elif any(v is not None for v in (chunks, instruction, question, answer_prefix)):
            raise ValueError("give the parts inside the PromptInput, or a prompt string with chunks/question/...")
        with self._lock:
            return compress_prompt(self, prompt, Budget.parse(budget, ratio), template, context_window)

    def score_chunks(
        self,
        chunks,
        *,
        question: str | None = None,
        instruction: str | None = None,
        reduce: str = "max",
        template: str = "chat",
    ) -> list[float]:
        """One draft pass over instruction + chunks + question; the draft's attention score of each chunk.

        Args:
            chunks: the passages to score (strings or ``Chunk``).
            question, instruction: read by the draft around the chunks (the question last).
            reduce: ``"max"`` or ``"mean"`` of a chunk's token scores.
            template: ``"chat"`` or ``"raw"``.

        Returns:
            One float per chunk; higher means the draft attended to it more while reading the question.
            Chunks with empty text score 0.0. Always runs the draft (no budget).
        """
        request = PromptInput(None, chunks, instruction, question)
        layout, tok, context = _read(request, self.draft.tokenizer, template)
        with self._lock:
            store = self.chunk_cache.bind(self.draft.model, tok.ids, context, tok.segment) or self.context_cache
            scored, _ = score_blocks(
                self.draft.model, tok.ids, context, self.specpc, set(), self.block_size, store=store
            )
        return chunk_scores(scored.scores, tok.segment, [s.chunk for s in layout], len(request.chunk_list), reduce)

    def warm_chunks(self, chunks, *, instruction: str | None = None, template: str = "chat") -> int:
        """Read ``chunks`` into the chunk cache ahead of the questions (e.g. when an index is built), as prompts with
        this ``instruction`` and ``template`` will read them; returns how many chunks were read now (not cached)."""
        if not self.chunk_cache.enabled:
            raise ValueError("warm_chunks fills the chunk cache, which is off: give the engine chunk_cache_mb > 0")
        _, tok, context = _read(PromptInput(None, chunks, instruction), self.draft.tokenizer, template)
        with self._lock:
            bound = self.chunk_cache.bind(self.draft.model, tok.ids, context, tok.segment)
            return bound.warm(self.draft.model) if bound else 0

    def compress_messages(
        self,
        messages: list[dict],
        *,
        budget: int | str | None = None,
        ratio: float | None = None,
        context: list[str] | None = None,
        context_window: int | None = None,
    ) -> chat.CompressedMessages:
        """SpecPC on the retrieved context inside a conversation (OpenAI-style message dicts).

        Which text is context and which is protected (instructions, questions, short messages) is the rule in
        ``draft_rag.messages``; ``ratio`` is the fraction of the context kept. Only ``content`` of messages whose
        context was compressed changes; the draft reads the conversation in its own chat template. ``context``:
        texts known to be the retrieved context (see ``draft_rag.messages.layout``). ``budget="auto"`` keeps as
        much as fits ``context_window`` tokens (default: the target's window); ``budget="adaptive"`` as much as
        the draft's attention needs, within that window when there is one.
        """
        parsed = Budget.parse(budget, ratio)
        fit = context_window or self.target_window if parsed.adaptive else None
        if parsed.auto:
            fit = context_window or self.target_window
            if fit is None:
                raise ValueError(
                    "budget='auto' needs a context window: pass context_window=... or give the engine a target"
                )
        request = ChatInput(messages, context)
        with self._lock:
            return compress_conversation(
                self, request.messages, request.layout, specpc_for(self.specpc, parsed), fit, auto=parsed.auto
            )

    def prune_chunks(self, chunks, question: str, **settings) -> PrunedChunks:
        """Keep the chunks the draft finds relevant to ``question`` (``selection.prune_chunks``; settings:
        ``instruction``, ``top_n``, ``threshold``, ``budget``, ``ratio``, ``compress_tokens``)."""
        return prune_chunks(self, chunks, question, **settings)

    # -- generation ----------------------------------------------------------------------------
    def plan(self, options: GenerationOptions | None = None, **kwargs) -> Plan:
        """``options`` (keywords of its field names override it) resolved against this engine's method, template
        and sparse prefill: what ``prepare`` takes."""
        options = (options or GenerationOptions()).replace(**kwargs)
        return Plan.of(options, self.method, self._template(), self.sparse_prefill)

    def prepare(self, request: PromptInput | ChatInput, plan: Plan, stats: GenerationStats | None = None,
                drafted: Drafted | None = None) -> Prepared:  # fmt: skip
        """One request's draft stage, under the engine lock: the target's prompt ids, its prefill (call
        ``prefill(engine.target.model, ids)``), SpecPC's result and what the draft produced (``pipeline.prepare``;
        ``plan``: ``engine.plan(...)``). ``drafted``: a ``Prepared.drafted`` from another engine with the same
        draft, for the same request and plan, reused instead of running the draft. For callers that decode
        themselves or time the stages (the cost bench)."""
        with self._lock:
            return prepare(self, request, plan, stats, drafted)

    def target_ids(self, request: PromptInput, template: str | None = None) -> list[int]:
        """A prompt's token ids in the target's template, uncompressed."""
        template = template or self._template()
        return tokenize(
            self.target.tokenizer, wrap(request.segments, self.target.tokenizer, template, request.system)
        ).ids

    def stream(self, prompt=None, *, options: GenerationOptions | None = None, **kwargs) -> GenerationStream:
        """Generate with the local target; yields text pieces as they are decoded.

        Args:
            prompt: the text (or a ``PromptInput`` / ``ChatInput`` carrying the whole input).
            options: how to generate (``GenerationOptions``: method, budgets, decoding, lookahead, template, sparse
                prefill). With ``specpc`` and no budget (or ``budget="auto"``) the prompt is compressed to fit the
                target's window, and a prompt that fits only when compressing pays (``draft_rag.payoff``; the stats'
                ``left_whole`` says why not); a prompt that (plus ``max_new_tokens``) exceeds the window raises
                ``ValueError`` early for the other methods.
            kwargs: the input's parts instead of ``prompt``'s: ``chunks``, ``instruction``, ``question``,
                ``answer_prefix`` (as in ``compress``), ``system``; or ``messages`` (OpenAI-style dicts answered in
                the target's own chat template, their retrieved context compressed as in ``compress_messages``, also
                for ``context``). And any ``GenerationOptions`` field, over ``options``'.

        Returns:
            A ``GenerationStream`` of text pieces; its ``stats`` and ``compressed`` are complete once exhausted.
        """
        if self.target is None:
            raise ValueError("this engine has no target model: pass target=... to DraftEngine to generate")
        parts = {k: kwargs.pop(k) for k in INPUT_NAMES if k in kwargs}
        plan = self.plan(options, **kwargs)
        if isinstance(prompt, (PromptInput, ChatInput)):
            if parts:
                raise ValueError(f"give the parts inside the {type(prompt).__name__}, not also {sorted(parts)}")
            request = prompt
        else:
            request = from_call(prompt, **parts)
        if isinstance(request, ChatInput):
            chat.check_text_only(request.messages, request.layout)
        stats = GenerationStats(plan.method.name)
        reply = GenerationStream(iter(()), stats)
        reply.pieces = self._run(reply, request, plan)
        return reply

    def generate(self, prompt: str | PromptInput | ChatInput | None = None, **kwargs) -> Generation:
        """Like ``stream`` but returns the whole text.

        Args:
            prompt, kwargs: as in ``stream``.

        Returns:
            A ``Generation``: the text, its ``GenerationStats`` and (SpecPC methods) the ``CompressedPrompt``.
        """
        reply = self.stream(prompt, **kwargs)
        text = "".join(reply)
        return Generation(text, reply.stats, reply.compressed)

    def _template(self) -> str:
        return "chat" if has_chat_template(self.target.tokenizer) else "raw"

    def _run(self, reply: GenerationStream, request, plan: Plan) -> Iterator[str]:
        """Prepare under the lock, then decode one locked step at a time."""
        stats = reply.stats
        with self._lock:
            t0 = time.perf_counter()
            prepared = prepare(self, request, plan, stats)
        reply.compressed = prepared.compressed
        t1 = time.perf_counter()
        target = self.target
        pieces = stream(target.model, target.tokenizer, prepared.ids, plan.sampling, prepared.prefill, stats)
        try:
            with contextlib.closing(pieces):  # prefill and each token run under the lock, one step at a time
                yield from self._locked_steps(pieces)
        finally:  # also when the caller stops early: the tokens decoded so far
            t2 = time.perf_counter()
            stats.seconds.update(target=t2 - t1, total=t2 - t0)

    def _locked_steps(self, pieces: Iterator[str]) -> Iterator[str]:
        """Each ``next(pieces)`` under the engine lock; the lock is free while the caller holds a piece."""
        while True:
            with self._lock:
                piece = next(pieces, None)
            if piece is None:
                return
            yield piece


_engines: dict[tuple, DraftEngine] = {}
_engines_lock = threading.Lock()


def shared_engine(
    target: Any = None,
    draft: Any = None,
    specpc: SpecPCConfig | None = None,
    speckv: SpecKVConfig | None = None,
    target_kwargs: dict | None = None,
    draft_kwargs: dict | None = None,
    context_cache_mb: float = DEFAULT_CONTEXT_CACHE_MB,
    chunk_cache_mb: float = 0,
) -> DraftEngine:
    """One ``DraftEngine`` per (target, draft, SpecPC and SpecKV settings), so that the framework adapters built on
    the same models share it (and its lock, so they take turns on the models).

    ``target_kwargs`` / ``draft_kwargs`` are ``load_model`` options (``device_map``, ``dtype``, ``model_kwargs``, ...);
    ``context_cache_mb`` and ``chunk_cache_mb`` bound the engine's draft context and chunk caches (``DraftEngine``).
    """
    if specpc is not None and not isinstance(specpc, SpecPCConfig):
        raise TypeError(f"specpc must be a draft_rag.SpecPCConfig, got {type(specpc).__name__}")
    if speckv is not None and not isinstance(speckv, SpecKVConfig):
        raise TypeError(f"speckv must be a draft_rag.SpecKVConfig, got {type(speckv).__name__}")
    t_opts, d_opts = load_options(target_kwargs, "target_kwargs"), load_options(draft_kwargs, "draft_kwargs")
    t = load_model(target, **t_opts) if target is not None else None
    d = load_model(draft, **d_opts) if draft is not None else (t or load_model(DEFAULT_MODEL, **d_opts))
    key = (id(t), id(d), specpc, speckv, context_cache_mb, chunk_cache_mb)
    with _engines_lock:
        if key not in _engines:
            _engines[key] = DraftEngine(
                t, d, specpc=specpc, speckv=speckv, context_cache_mb=context_cache_mb, chunk_cache_mb=chunk_cache_mb
            )
        return _engines[key]


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` (process-wide) after checking it; None leaves torch's setting."""
    if threads is None:
        return
    check_int("threads", threads, 1)
    import torch

    torch.set_num_threads(threads)


def _options(shared: dict, own: dict | None, name: str) -> dict:
    """One model's ``load_model`` options: the shared ones, overridden by its own (a device by a device_map)."""
    own = load_options(own, name)
    placed = {"device", "device_map"} & set(own)
    return {**{k: v for k, v in shared.items() if not (placed and k in ("device", "device_map"))}, **own}


def _read(request: PromptInput, tokenizer, template: str):
    """How the draft reads a request: its layout, tokens and which tokens are retrieved context."""
    layout = wrap(request.segments, tokenizer, template)
    tok = tokenize(tokenizer, layout)
    return layout, tok, [layout[g].role == "context" for g in tok.segment]
