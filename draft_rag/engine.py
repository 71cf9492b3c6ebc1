"""DraftEngine: prompt -> [SpecPC with the draft] -> local target generation, with stats.

The one place both framework adapters call. Thread-safe: the engine's lock is held only while a step
computes (a compression, a stream's setup and prefill, one decoded token), never between a stream's pieces,
so an abandoned or unfinished stream never blocks other calls, from this thread or any other.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import baselines, speckv
from . import messages as chat
from .blocks import block_size_for, score_blocks
from .config import SPECKV_PC_KERNEL, SPECKV_PC_LOOKAHEAD, SpecKVConfig, SpecPCConfig, check_budget
from .generation import Sampling, eos_ids, stream
from .models import DEFAULT_MODEL, LoadedModel, context_window, load_model, load_options
from .prompt import Segment, build_segments, count_tokens, has_chat_template, template_parts, tokenize, wrap
from .scoring import chunk_scores
from .specpc import CompressedPrompt, compress

logger = logging.getLogger(__name__)
METHODS = ("full", "specpc") + baselines.KV_METHODS
AUTO_MARGIN = 0.97  # budget="auto" aims at 97% of the room: kept pieces may re-tokenise a little longer
DEFAULT_PC_BUDGET = 2048  # SpecPC's prompt budget inside speckv-pc when neither pc_budget nor pc_ratio is given


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
    compression: dict = field(default_factory=dict)  # messages=...: CompressedMessages.stats

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Generation:
    text: str
    stats: GenerationStats
    compressed: CompressedPrompt | None = None


class GenerationStream:
    """Iterator of text pieces; ``stats`` and ``compressed`` are complete once it is exhausted."""

    def __init__(self, pieces: Iterator[str], stats: GenerationStats, compressed: CompressedPrompt | None):
        self._pieces, self.stats, self.compressed = pieces, stats, compressed

    def __iter__(self):
        return self._pieces


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
    ):
        _check_method(method)
        set_threads(threads)
        shared = {
            k: v
            for k, v in dict(
                device=device, dtype=dtype, device_map=device_map, attn_implementation=attn_implementation
            ).items()
            if v is not None
        }
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
        self._lock = threading.Lock()  # held per step only (see the module docstring)

    # -- compression ---------------------------------------------------------------------------
    def compress(
        self,
        prompt: str | None = None,
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
            prompt: the text to compress (all of it compressible), or None when ``chunks`` are given.
            chunks: retrieved passages (strings or ``Chunk``), compressed each with its own provenance.
            instruction, question, answer_prefix: protected text, kept word for word.
            budget, ratio: the prompt budget in draft tokens, or as a fraction of the prompt; they override
                the engine's SpecPCConfig for this call. ``budget="auto"`` keeps as much as fits ``context_window``
                tokens (default: the target's window), with a small margin for re-tokenisation.
            context_window: the window ``budget="auto"`` fits (default: the target's).
            template: ``"chat"`` (the draft's chat template) or ``"raw"``.

        Returns:
            A ``CompressedPrompt``: the kept text, per-chunk results and token counts (in the target's
            tokenizer when the engine has a target).
        """
        segments, chunk_list = build_segments(
            prompt, chunks=chunks, instruction=instruction, question=question, answer_prefix=answer_prefix
        )
        if budget == "auto":
            _check_auto(ratio)
            budget = self._fit_budget(segments, template, context_window, 0)
        cfg = self._config(budget, ratio)
        with self._lock:
            return compress(
                self.draft.model,
                self.draft.tokenizer,
                segments,
                chunk_list,
                cfg,
                template=template,
                target_tokenizer=self.target.tokenizer if self.target else None,
                block_size=self.block_size,
            )

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
        segments, chunk_list = build_segments(None, chunks=chunks, instruction=instruction, question=question)
        layout = wrap(segments, self.draft.tokenizer, template)
        tok = tokenize(self.draft.tokenizer, layout)
        with self._lock:
            dp, _ = score_blocks(
                self.draft.model,
                tok.ids,
                [layout[g].role == "context" for g in tok.segment],
                self.specpc,
                set(),
                self.block_size,
            )
        return chunk_scores(dp.scores, tok.segment, [s.chunk for s in layout], len(chunk_list), reduce)

    def _config(self, budget, ratio) -> SpecPCConfig:
        check_budget(budget, ratio)
        if budget is not None or ratio is not None:
            return self.specpc.replace(max_capacity_prompt=budget, ratio=ratio)
        return self.specpc

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
        much as fits ``context_window`` tokens (default: the target's window).
        """
        fit = None
        if budget == "auto":
            _check_auto(ratio)
            fit, budget = context_window or self.target_window, None
            if fit is None:
                raise ValueError(
                    "budget='auto' needs a context window: pass context_window=... or give the engine a target"
                )
        cfg = self._config(budget, ratio)
        lay = chat.layout(messages, context)
        with self._lock:
            return self._compress_layout(list(messages), lay, cfg, fit)

    def _compress_layout(
        self, messages: list[dict], lay: chat.Layout, cfg: SpecPCConfig, fit: int | None = None
    ) -> chat.CompressedMessages:
        """``compress_messages`` with the lock held; ``fit``: the window a ``budget="auto"`` fills."""
        draft = self.draft
        counter = self.target.tokenizer if self.target else draft.tokenizer
        template = "chat" if has_chat_template(draft.tokenizer) else "raw"
        segments = _drop_lead(chat.render(messages, lay, draft.tokenizer, template), draft.tokenizer)
        question = chat.reread_question(messages, lay)
        if question:  # the draft's window should read the question: once more, at the end, for the draft only
            segments = segments + [Segment("\n\n", "separator"), Segment(question, "question")]
        if fit is not None:
            budget = self._fit_budget(segments, "raw", fit, 0, full_ids=tokenize(counter, segments).ids)
            cfg = cfg.replace(max_capacity_prompt=budget)
        indices = chat.rendered_indices(segments, lay)
        stats: dict = {"token_counts": "target tokenizer" if self.target else "draft tokenizer", "messages": []}
        if not indices:
            n = sum(count_tokens(draft.tokenizer, s.text) for s in segments if s.in_output)
            budget = None if cfg.ratio is not None else cfg.budget_for(n)
            stats.update(
                original_tokens=n,
                compressed_tokens=n,
                token_counts="draft tokenizer",
                seconds={"draft": 0.0, "select": 0.0},
            )
            if budget is not None and n > budget:
                stats["warning"] = (
                    f"the conversation has {n} draft tokens, over the budget of {budget}, but no "
                    "retrieved context to compress (see draft_rag.messages); sent whole"
                )
                _warn_once(stats["warning"])
            return chat.CompressedMessages([dict(m) for m in messages], stats, None)
        cp = compress(
            draft.model,
            draft.tokenizer,
            segments,
            lay.chunks,
            cfg,
            template="raw",
            target_tokenizer=counter,
            block_size=self.block_size,
        )
        out = chat.rebuild(messages, lay, cp, indices)
        for i in sorted(indices):
            before = count_tokens(counter, "".join(c.text for c in lay.chunks if c.id == i))
            after = count_tokens(counter, "".join(cp.chunks[k].text for k, c in enumerate(lay.chunks) if c.id == i))
            stats["messages"].append(
                {"message_index": i, "context_tokens": before, "kept_fraction": after / max(1, before)}
            )
        stats.update(
            original_tokens=cp.original_tokens,
            compressed_tokens=cp.compressed_tokens,
            draft_original_tokens=cp.draft_original_tokens,
            draft_kept_tokens=cp.draft_kept_tokens,
            draft_blocks=cp.draft_blocks,
            seconds=dict(cp.seconds),
        )
        return chat.CompressedMessages(out, stats, cp)

    # -- generation ----------------------------------------------------------------------------
    def stream(
        self,
        prompt: str | None = None,
        *,
        chunks=None,
        instruction: str | None = None,
        question: str | None = None,
        answer_prefix: str | None = None,
        method: str | None = None,
        budget: int | None = None,
        ratio: float | None = None,
        template: str | None = None,
        system: str | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop=(),
        seed: int | None = None,
        pc_budget: int | None = None,
        pc_ratio: float | None = None,
        lookahead_tokens: int | None = None,
        messages: list[dict] | None = None,
        context: list[str] | None = None,
    ) -> GenerationStream:
        """Generate with the local target; yields text pieces as they are decoded.

        Args:
            messages: OpenAI-style dicts instead of a prompt, answered in the target's own chat template;
                SpecPC compresses the retrieved context inside them (see ``compress_messages``, also for
                ``context``).
            prompt, chunks, instruction, question, answer_prefix: as in ``compress``.
            method: one of ``METHODS``; defaults to the engine's.
            budget, ratio: the prompt budget for ``specpc``, the KV budget (entries per layer and KV head)
                for the KV methods. ``specpc`` with no budget, or ``budget="auto"``, compresses to fit the
                target's window; a prompt that (plus ``max_new_tokens``) exceeds it raises ``ValueError`` early.
            template: ``"chat"``/``"raw"``; defaults to chat when the target's tokenizer has a template.
            system: system prompt (chat template only).
            max_new_tokens, temperature, top_p, top_k, stop, seed: decoding settings (temperature 0 = greedy).
            pc_budget, pc_ratio: ``speckv-pc``'s prompt budget (default 2048 tokens).
            lookahead_tokens: SpecKV's draft lookahead; overrides SpecKVConfig's (default: ``max_new_tokens``
                for speckv; for speckv-pc, the 20 tokens its SpecPC stage drafts, as in the official configs).

        Returns:
            A ``GenerationStream`` of text pieces; its ``stats`` and ``compressed`` are complete once exhausted.
        """
        if self.target is None:
            raise ValueError("this engine has no target model: pass target=... to DraftEngine to generate")
        method = method or self.method
        _check_method(method)
        sampling = Sampling(
            max_new_tokens, temperature, top_p, top_k, tuple([stop] if isinstance(stop, str) else stop or ()), seed
        )
        template = template or ("chat" if has_chat_template(self.target.tokenizer) else "raw")
        if context is not None and messages is None:
            raise ValueError("context=... names retrieved text inside messages=...; give messages too")
        if messages is not None:
            if prompt is not None or chunks is not None or question is not None or instruction is not None:
                raise ValueError("give messages=... or a prompt (prompt/chunks/instruction/question), not both")
            if system is not None or answer_prefix is not None:
                raise ValueError("with messages=..., put the system prompt and answer prefix in the messages")
            return self._stream_messages(
                messages,
                context,
                method,
                template,
                sampling,
                budget=budget,
                ratio=ratio,
                pc_budget=pc_budget,
                pc_ratio=pc_ratio,
                lookahead=lookahead_tokens,
            )
        segments, chunk_list = build_segments(
            prompt, chunks=chunks, instruction=instruction, question=question, answer_prefix=answer_prefix
        )
        auto = self._auto_budget(method, budget, ratio)
        cfg = self._config(None if auto else budget, ratio)
        check_budget(pc_budget, pc_ratio, "pc_")
        stats = GenerationStats(method)
        gs = GenerationStream(iter(()), stats, None)

        def setup():
            t0 = time.perf_counter()
            full_ids = self._target_ids(segments, template, system)
            stats.original_tokens = len(full_ids)
            ids = full_ids
            if method not in ("specpc", "speckv-pc"):  # nothing will shorten the prompt
                self._check_fits(len(ids), max_new_tokens, lookahead_tokens)
            if method == "specpc":
                run_cfg = (
                    cfg.replace(
                        max_capacity_prompt=self._fit_budget(
                            segments, template, self.target_window, max_new_tokens, system, full_ids
                        )
                    )
                    if auto
                    else cfg
                )
                cp = compress(
                    self.draft.model,
                    self.draft.tokenizer,
                    segments,
                    chunk_list,
                    run_cfg,
                    template=template,
                    target_tokenizer=self.target.tokenizer,
                    block_size=self.block_size,
                )
                gs.compressed, stats.draft_blocks = cp, cp.draft_blocks
                stats.seconds.update(draft=cp.seconds["draft"], select=cp.seconds["select"])
                ids = self._target_ids(_compressed_segments(cp, segments), template, system)
                self._check_fits(len(ids), max_new_tokens)
            prefill = functools.partial(_prefill_with_stats, speckv.plain_prefill_stats, stats)
            if method in baselines.KV_METHODS:
                ids, prefill, gs.compressed = self._kv_setup(
                    method,
                    segments,
                    chunk_list,
                    ids,
                    template,
                    system,
                    sampling,
                    stats,
                    budget=budget,
                    ratio=ratio,
                    pc_budget=pc_budget,
                    pc_ratio=pc_ratio,
                    lookahead=lookahead_tokens,
                )
                self._check_fits(len(ids), max_new_tokens, stats.lookahead_tokens)
            stats.prompt_tokens = len(ids)
            return t0, ids, prefill

        gs._pieces = self._run(setup, sampling, stats)
        return gs

    def _run(self, setup, sampling: Sampling, stats: GenerationStats) -> Iterator[str]:
        """``setup()`` -> (t0, target ids, prefill) under the lock, then decode one locked step at a time."""
        with self._lock:
            t0, ids, prefill = setup()
        t1 = time.perf_counter()
        info: dict = {}
        pieces = stream(self.target.model, self.target.tokenizer, ids, sampling, prefill, info)
        try:
            with contextlib.closing(pieces):  # prefill and each token run under the lock, one step at a time
                yield from self._locked_steps(pieces)
        finally:  # also when the caller stops early: the tokens decoded so far
            t2 = time.perf_counter()
            stats.new_tokens, stats.finish_reason = info.get("new_tokens", 0), info.get("finish_reason", "")
            stats.seconds.update(target=t2 - t1, total=t2 - t0)

    def _locked_steps(self, pieces: Iterator[str]) -> Iterator[str]:
        """Each ``next(pieces)`` under the engine lock; the lock is free while the caller holds a piece."""
        while True:
            with self._lock:
                piece = next(pieces, None)
            if piece is None:
                return
            yield piece

    def _stream_messages(
        self, messages, context, method, template, sampling, *, budget, ratio, pc_budget, pc_ratio, lookahead
    ) -> GenerationStream:
        """``stream(messages=...)``: the conversation in the target's chat template; SpecPC on its context."""
        lay = chat.layout(messages, context)
        chat.check_text_only(messages, lay)
        messages = list(messages)
        auto = self._auto_budget(method, budget, ratio)
        stats = GenerationStats(method)
        gs = GenerationStream(iter(()), stats, None)

        def setup():
            t0 = time.perf_counter()
            target = self.target.tokenizer
            segments = chat.render(messages, lay, target, template)
            ids = tokenize(target, segments).ids
            stats.original_tokens = len(ids)
            msgs, m_lay = messages, lay
            if method in ("specpc", "speckv-pc"):
                pc = (
                    self._config(None if auto else budget, ratio)
                    if method == "specpc"
                    else self._speckv_pc_config(pc_budget, pc_ratio, self._lookahead_count(method, lookahead, sampling))
                )
                fit = self.target_window - sampling.max_new_tokens if auto and self.target_window else None
                cm = self._compress_layout(messages, lay, pc, fit)
                gs.compressed, stats.compression = cm.compressed, cm.stats
                stats.seconds.update(cm.stats["seconds"])
                msgs = cm.messages
                m_lay = chat.layout(msgs)
                segments = chat.render(msgs, m_lay, target, template)
                ids = tokenize(target, segments).ids
            prefill = functools.partial(_prefill_with_stats, speckv.plain_prefill_stats, stats)
            if method in baselines.KV_METHODS:
                draft_template = template if has_chat_template(self.draft.tokenizer) else "raw"
                draft_segments = chat.render(msgs, m_lay, self.draft.tokenizer, draft_template)
                ids, prefill, _ = self._kv_setup(
                    "speckv" if method == "speckv-pc" else method,
                    _drop_lead(draft_segments, self.draft.tokenizer),
                    [],
                    ids,
                    "raw",
                    None,
                    sampling,
                    stats,
                    budget=budget,
                    ratio=ratio,
                    pc_budget=None,
                    pc_ratio=None,
                    lookahead=lookahead,
                    drafted=gs.compressed.lookahead_ids if method == "speckv-pc" and gs.compressed else None,
                )
            self._check_fits(len(ids), sampling.max_new_tokens, stats.lookahead_tokens)
            stats.prompt_tokens = len(ids)
            return t0, ids, prefill

        gs._pieces = self._run(setup, sampling, stats)
        return gs

    def generate(self, prompt: str | None = None, **kwargs) -> Generation:
        """Like ``stream`` but returns the whole text.

        Args:
            prompt, kwargs: as in ``stream``.

        Returns:
            A ``Generation``: the text, its ``GenerationStats`` and (SpecPC methods) the ``CompressedPrompt``.
        """
        gs = self.stream(prompt, **kwargs)
        text = "".join(gs)
        return Generation(text, gs.stats, gs.compressed)

    def _kv_setup(
        self,
        method,
        segments,
        chunk_list,
        ids,
        template,
        system,
        sampling,
        stats,
        *,
        budget,
        ratio,
        pc_budget,
        pc_ratio,
        lookahead,
        drafted=None,
    ):
        """Target ids, the evicting prefill and (speckv-pc) the CompressedPrompt for a KV method.

        ``drafted``: lookahead ids the draft already produced for this prompt (SpecKV-PC's chat path).
        """
        cfg = (
            self.speckv.replace(max_capacity_prompt=budget, ratio=ratio)
            if budget is not None or ratio is not None
            else self.speckv
        )
        n_look = self._lookahead_count(method, lookahead, sampling)
        draft, target = self.draft, self.target
        eos = eos_ids(draft.model, draft.tokenizer)
        cp, look = None, list(drafted or [])
        if method == "speckv-pc":
            cp = compress(
                draft.model,
                draft.tokenizer,
                segments,
                chunk_list,
                self._speckv_pc_config(pc_budget, pc_ratio, n_look),
                template=template,
                target_tokenizer=target.tokenizer,
                block_size=self.block_size,
            )
            stats.seconds.update(draft=cp.seconds["draft"], select=cp.seconds["select"])
            stats.draft_blocks = cp.draft_blocks
            segments = _compressed_segments(cp, segments)
            ids = self._target_ids(segments, template, system)
            look = cp.lookahead_ids
        budget_n = cfg.budget_for(len(ids))
        if method in baselines.LOOKAHEAD_METHODS and n_look and budget_n < len(ids):
            if not look:  # SpecPC did not run the draft (prompt within its budget), or plain speckv
                t0 = time.perf_counter()
                draft_ids = tokenize(draft.tokenizer, wrap(segments, draft.tokenizer, template, system)).ids
                if self.draft_window and len(draft_ids) + n_look > self.draft_window:
                    raise ValueError(
                        f"{method}: the draft would read {len(draft_ids)} prompt tokens + {n_look} lookahead tokens, "
                        f"more than its context window of {self.draft_window}; use method='speckv-pc' (SpecPC "
                        "shortens the prompt first) or a draft with a longer window"
                    )
                look = speckv.draft_lookahead(draft.model, draft_ids, n_look, eos)
                stats.seconds["draft"] = stats.seconds.get("draft", 0.0) + time.perf_counter() - t0
            look = speckv.lookahead_for_target(draft.tokenizer, target.tokenizer, look, eos)
        else:
            look = []
        stats.lookahead_tokens = len(look)
        run = functools.partial(
            speckv.compressed_prefill,
            lookahead_ids=look,
            budget=budget_n,
            scorer=baselines.scorer(method, cfg),
            window=cfg.window_size,
            horizon=sampling.max_new_tokens,
        )
        return ids, functools.partial(_prefill_with_stats, run, stats), cp

    def _lookahead_count(self, method: str, lookahead, sampling) -> int:
        """SpecKV's lookahead length: the argument, else SpecKVConfig's, else the official default
        (SpecKV drafts ``max_new_tokens``; SpecKV-PC reuses the 20 tokens its SpecPC stage drafts)."""
        n_look = lookahead if lookahead is not None else self.speckv.lookahead_tokens
        if n_look is None:
            n_look = SPECKV_PC_LOOKAHEAD if method == "speckv-pc" else sampling.max_new_tokens
        if isinstance(n_look, bool) or not isinstance(n_look, int) or n_look < 0:
            raise ValueError(f"lookahead_tokens must be an integer >= 0, got {n_look!r}")
        return n_look

    def _speckv_pc_config(self, pc_budget, pc_ratio, n_look: int) -> SpecPCConfig:
        """SpecKV-PC's SpecPC stage as in the official configs: kernel = neighbours = 32 unless set, the
        SpecKV lookahead drafted here, and DEFAULT_PC_BUDGET when no prompt budget is given."""
        check_budget(pc_budget, pc_ratio)
        pc = self.specpc.replace(max_capacity_prompt=pc_budget, ratio=pc_ratio, lookahead_tokens=n_look)
        if pc.kernel_size is None:
            pc = pc.replace(kernel_size=SPECKV_PC_KERNEL)
        if pc_budget is None and pc_ratio is None:
            pc = pc.replace(max_capacity_prompt=DEFAULT_PC_BUDGET)
        return pc

    def _auto_budget(self, method: str, budget, ratio) -> bool:
        """Whether ``specpc`` fits the target's window: ``budget="auto"``, or no budget here nor in SpecPCConfig."""
        if budget == "auto":
            _check_auto(ratio, method)
            return True
        unset = self.specpc.max_capacity_prompt is None and self.specpc.ratio is None
        return method == "specpc" and budget is None and ratio is None and unset

    def _check_fits(self, n_prompt: int, max_new_tokens: int, lookahead: int | None = 0) -> None:
        """Refuse a target prompt that, with what will be generated (or drafted ahead), exceeds its window."""
        window, extra = self.target_window, max(max_new_tokens, lookahead or 0)
        if window and n_prompt + extra > window:
            ahead = f" (lookahead {lookahead} tokens)" if extra > max_new_tokens else ""
            raise ValueError(
                f"the target's context window is {window} tokens, but the prompt is {n_prompt} tokens and "
                f"max_new_tokens={max_new_tokens}{ahead}: {n_prompt + extra} > {window}. Compress it "
                "(method='specpc' with budget='auto' or a smaller budget, or 'speckv-pc') or lower max_new_tokens"
            )

    def _fit_budget(
        self,
        segments,
        template: str,
        window: int | None,
        reserve: int,
        system: str | None = None,
        full_ids: list[int] | None = None,
    ) -> int:
        """Draft-token budget whose compressed text fits ``window - reserve`` tokens of the target (or, with no
        target, of the model behind ``window``), template included, with a margin for re-tokenisation."""
        window = window or self.target_window
        if window is None:
            raise ValueError(
                "budget='auto' needs a context window: pass context_window=... (tokens the compressed "
                "prompt must fit) or give the engine a target"
            )
        counter = self.target.tokenizer if self.target else self.draft.tokenizer
        body = [s for s in segments if s.in_output]
        text_tokens = len(tokenize(counter, body).ids)
        if full_ids is None:
            full_ids = tokenize(counter, wrap(segments, counter, template, system)).ids
        wrapped = len(full_ids)
        room = window - reserve - (wrapped - text_tokens)
        draft_tokens = len(tokenize(self.draft.tokenizer, body).ids)
        budget = int(room * draft_tokens / max(1, text_tokens) * AUTO_MARGIN)
        if budget < 1:
            raise ValueError(
                f"budget='auto': a context window of {window} tokens leaves no room for the prompt "
                f"after {reserve} new tokens and {wrapped - text_tokens} template tokens"
            )
        return budget

    def _target_ids(self, segments: list[Segment], template: str, system: str | None) -> list[int]:
        return tokenize(self.target.tokenizer, wrap(segments, self.target.tokenizer, template, system)).ids


def _compressed_segments(cp: CompressedPrompt, segments: list[Segment]) -> list[Segment]:
    """The compressed text as untrusted content, with the answer prefix (kept whole) after it."""
    prefix = "".join(s.text for s in segments if s.role == "answer_prefix")
    body = cp.text[: len(cp.text) - len(prefix)] if prefix else cp.text
    return [Segment(body, "context")] + ([Segment(prefix, "answer_prefix")] if prefix else [])


def _prefill_with_stats(run, stats: GenerationStats, model, ids):
    """Run a (state, KVStats) prefill and copy its KV figures and timings into ``stats``."""
    state, kv = run(model, ids)
    stats.kv_bytes, stats.kv_bytes_full, stats.kv_entries = kv.kv_bytes, kv.kv_bytes_full, kv.entries
    stats.seconds.update(prefill=kv.seconds["prefill"], kv_select=kv.seconds["select"])
    return state


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` (process-wide) after checking it; None leaves torch's setting."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer (torch CPU threads), got {threads!r}")
    import torch

    torch.set_num_threads(threads)


def _check_auto(ratio, method: str = "specpc") -> None:
    if method != "specpc":
        raise ValueError(f"budget='auto' (fit the target's window) is for method='specpc', got method={method!r}")
    if ratio is not None:
        raise ValueError("give either budget='auto' or ratio, not both")


def _options(shared: dict, own: dict | None, name: str) -> dict:
    """One model's ``load_model`` options: the shared ones, overridden by its own (a device by a device_map)."""
    own = load_options(own, name)
    placed = {"device", "device_map"} & set(own)
    return {**{k: v for k, v in shared.items() if not (placed and k in ("device", "device_map"))}, **own}


def _drop_lead(segments: list[Segment], tokenizer) -> list[Segment]:
    """Rendered segments without the leading special tokens (e.g. ``<bos>``) that ``wrap(..., "raw")`` adds."""
    lead = template_parts(tokenizer, "raw")[0]
    if lead and segments and segments[0].role == "template" and segments[0].text.startswith(lead):
        return [Segment(segments[0].text[len(lead) :], "template")] + segments[1:]
    return segments


_warned: set[str] = set()


def _warn_once(message: str, key: str = "over budget, nothing compressible") -> None:
    """Log ``message`` as a warning the first time a warning of this ``key`` comes up in the process."""
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
