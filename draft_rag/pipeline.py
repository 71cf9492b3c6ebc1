"""One request path for prompts and conversations: compress, tokenise for the target, plan the KV prefill.

``prepare`` is what ``DraftEngine.stream`` runs under the engine lock before decoding, and what the bench calls
to time a method's stages. The same steps run for a ``PromptInput`` and a ``ChatInput``; only how text is
rendered and compressed differs (``_PromptText`` and ``_Conversation``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass

from . import messages as chat
from . import speckv
from .budgets import (
    Fit,
    budget_reason,
    check_fits,
    fills_window,
    fitted,
    is_adaptive,
    lookahead_count,
    request_specpc,
    specpc_for,
)
from .config import Budget, SpecPCConfig
from .generation import Prefill, eos_ids
from .inputs import ChatInput, PromptInput
from .options import Plan
from .prompt import CHUNK_SEPARATOR, Segment, count_tokens, has_chat_template, template_parts, tokenize, wrap
from .scoring import cached_prefix
from .specpc import CompressedPrompt, compress
from .state import EngineState
from .stats import CompressionStats, GenerationStats, MessageStats

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Drafted:
    """What the draft produced for one request under one plan: SpecPC's result (a ``CompressedPrompt``, or
    ``CompressedMessages`` for a conversation), the lookahead it drafted apart (draft token ids) and its seconds.
    ``prepare(..., drafted=)`` reuses it to prepare the same request for another target with the same draft."""

    method: str
    draft: object  # the draft model that produced it
    shortened: CompressedPrompt | chat.CompressedMessages | None = None
    lookahead: tuple[int, ...] = ()
    lookahead_seconds: float = 0.0


@dataclass
class Prepared:
    """A request ready to decode: the target's prompt ids, its prefill, SpecPC's result, the stats so far and
    what the draft produced (``drafted``)."""

    ids: list[int]
    prefill: Prefill
    compressed: CompressedPrompt | None
    stats: GenerationStats
    drafted: Drafted


def prepare(
    engine: EngineState,
    request: PromptInput | ChatInput,
    plan: Plan,
    stats: GenerationStats | None = None,
    drafted: Drafted | None = None,
) -> Prepared:
    """Compress (SpecPC methods), tokenise for the target, and plan the prefill (KV methods evict); ``stats``
    (a new one by default) is filled as the steps run. ``drafted``: another ``Prepared``'s ``drafted`` for the same
    request and plan with the same draft, reused instead of running the draft again (the stats read as if it ran).
    Call with the engine lock held."""
    method, sampling = plan.method, plan.sampling
    _check_drafted(engine, plan, drafted)
    kind = _PromptText if isinstance(request, PromptInput) else _Conversation
    text = kind(engine, request, plan)
    stats = stats if stats is not None else GenerationStats(method.name)
    stats.budget_reason = budget_reason(engine, plan)
    ids = text.original_ids
    stats.original_tokens = len(ids)
    if not method.shortens_prompt:  # nothing will shorten the prompt: refuse it before any draft work
        check_fits(engine, len(ids), sampling.max_new_tokens, plan.lookahead)
    compressed = None
    n_look = lookahead_count(engine, plan) if method.drafts_lookahead else 0
    if method.shortens_prompt:
        reuse = drafted.shortened if drafted else None
        compressed = text.compress(request_specpc(engine, plan, n_look), stats, reuse)
        ids = text.target_ids()
    prefill = functools.partial(_with_stats, functools.partial(speckv.plain_prefill_stats, sparse=plan.sparse), stats)
    product = Drafted(method.name, engine.draft.model, text.shortened)
    if method.evicts_kv:
        prefill, product = _kv_prefill(engine, plan, text, ids, compressed, n_look, stats, drafted or product)
    check_fits(engine, len(ids), sampling.max_new_tokens, stats.lookahead_tokens)
    stats.prompt_tokens = len(ids)
    return Prepared(ids, prefill, compressed, stats, product)


def _check_drafted(engine: EngineState, plan: Plan, drafted: Drafted | None) -> None:
    """Refuse a ``drafted`` from another method or draft model."""
    if drafted is None:
        return
    if not isinstance(drafted, Drafted):
        raise TypeError(f"drafted must be a Prepared's .drafted (pipeline.Drafted), got {type(drafted).__name__}")
    if drafted.method != plan.method.name:
        raise ValueError(
            f"drafted= was drafted for method {drafted.method!r}, but this plan runs {plan.method.name!r}: "
            "reuse it only for the same request and plan"
        )
    if drafted.draft is not engine.draft.model:
        raise ValueError("drafted= came from another draft model than this engine's: reuse it with the same draft")


def _ids_and_context_end(tokenizer, layout: list[Segment]) -> tuple[list[int], int]:
    """``layout``'s token ids and the end of its last retrieved-context token (0: it has none)."""
    tok = tokenize(tokenizer, layout)
    ends = [i + 1 for i, seg in enumerate(tok.segment) if layout[seg].role == "context"]
    return tok.ids, (ends[-1] if ends else 0)


class _PromptText:
    """A ``PromptInput`` in the target's template; compression replaces its context by the kept text."""

    def __init__(self, engine: EngineState, request: PromptInput, plan: Plan):
        self.engine, self.plan, self.system, self.request = engine, plan, request.system, request
        self.segments, self.chunks = request.segments, request.chunk_list
        self.shortened: CompressedPrompt | None = None
        self.original_ids = self.target_ids()  # before compression; the budget fit reads them too

    def target_ids(self) -> list[int]:
        target = self.engine.target.tokenizer
        return tokenize(target, wrap(self.segments, target, self.plan.template, self.system)).ids

    def draft_prompt(self) -> tuple[list[int], int]:
        draft = self.engine.draft.tokenizer
        return _ids_and_context_end(draft, wrap(self.segments, draft, self.plan.template, self.system))

    def compress(self, cfg: SpecPCConfig, stats: GenerationStats, reuse: CompressedPrompt | None = None):
        """SpecPC on the context (``reuse``: its result from another target's preparation); the kept text
        replaces it."""
        shortened = reuse or self._draft(cfg, stats)
        stats.draft_blocks, stats.draft_cached_tokens = shortened.draft_blocks, shortened.draft_cached_tokens
        stats.unsupported = shortened.unsupported
        stats.seconds.update(draft=shortened.seconds["draft"], select=shortened.seconds["select"])
        self.segments = compressed_segments(shortened, self.segments)
        self.shortened = shortened
        return shortened

    def _draft(self, cfg: SpecPCConfig, stats: GenerationStats) -> CompressedPrompt:
        engine, plan = self.engine, self.plan
        auto = fills_window(engine, plan)
        if auto or (is_adaptive(engine, plan) and engine.target_window):
            fit = Fit(self.segments, plan.template, engine.target_window, plan.sampling.max_new_tokens, self.system,
                      self.original_ids)  # fmt: skip
            cfg, stats.left_whole = fitted(engine, cfg, fit, auto)
        shortened = run_specpc(
            engine, self.request.draft_segments(), self.chunks, cfg, plan.template, engine.target.tokenizer
        )
        return without_reread(shortened, self.request, engine)


class _Conversation:
    """A ``ChatInput`` in the target's chat template; compression replaces the retrieved context in messages."""

    def __init__(self, engine: EngineState, request: ChatInput, plan: Plan):
        chat.check_text_only(request.messages, request.layout)
        self.engine, self.plan = engine, plan
        self.messages, self.layout = request.messages, request.layout
        self.shortened: chat.CompressedMessages | None = None
        self.original_ids = self.target_ids()  # before compression

    def target_ids(self) -> list[int]:
        target = self.engine.target.tokenizer
        return tokenize(target, chat.render(self.messages, self.layout, target, self.plan.template)).ids

    def draft_prompt(self) -> tuple[list[int], int]:
        draft = self.engine.draft.tokenizer
        template = self.plan.template if has_chat_template(draft) else "raw"
        segments = drop_lead(chat.render(self.messages, self.layout, draft, template), draft)
        return _ids_and_context_end(draft, wrap(segments, draft, "raw"))

    def compress(self, cfg: SpecPCConfig, stats: GenerationStats, reuse: chat.CompressedMessages | None = None):
        """SpecPC on the retrieved context in the messages (``reuse``: its result from another target's
        preparation); the compressed messages replace them."""
        engine, plan = self.engine, self.plan
        if reuse is None:
            window = engine.target_window
            fits = fills_window(engine, plan) or is_adaptive(engine, plan)
            fit = window - plan.sampling.max_new_tokens if window and fits else None
            reuse = compress_conversation(engine, self.messages, self.layout, cfg, fit, auto=fills_window(engine, plan))
        compression = stats.compression = reuse.stats
        stats.left_whole = compression.left_whole
        stats.draft_blocks = compression.draft_blocks or 0
        stats.draft_cached_tokens = compression.draft_cached_tokens or 0
        stats.unsupported = compression.unsupported or 0
        stats.seconds.update(compression.seconds)
        self.messages, self.shortened = reuse.messages, reuse
        self.layout = chat.layout(self.messages)
        return reuse.compressed


def run_specpc(engine: EngineState, segments, chunks, cfg: SpecPCConfig, template: str, count_tokenizer=None):
    """``specpc.compress`` with the engine's draft, block size and caches (call with the engine lock held);
    token counts in ``count_tokenizer`` (default: the draft's)."""
    draft = engine.draft
    return compress(draft.model, draft.tokenizer, segments, chunks, cfg, template=template,
                    target_tokenizer=count_tokenizer, block_size=engine.block_size,
                    context_cache=engine.context_cache, chunk_cache=engine.chunk_cache)  # fmt: skip


def compress_prompt(engine: EngineState, request: PromptInput, budget: Budget, template: str, window: int | None):
    """SpecPC on a prompt at a call's ``budget`` (``DraftEngine.compress``): ``auto`` and ``adaptive`` fit ``window``
    (default: the target's). Call with the engine lock held."""
    cfg, why = specpc_for(engine.specpc, budget), ""
    if budget.auto or (budget.adaptive and (window or engine.target_window)):
        cfg, why = fitted(engine, cfg, Fit(request.segments, template, window), budget.auto)
    result = run_specpc(engine, request.draft_segments(), request.chunk_list, cfg, template,
                        engine.target.tokenizer if engine.target else None)  # fmt: skip
    result = without_reread(result, request, engine)
    result.left_whole = why
    return result


def compress_conversation(
    engine: EngineState,
    messages: list[dict],
    lay: chat.Layout,
    cfg: SpecPCConfig,
    window: int | None = None,
    auto: bool = False,
) -> chat.CompressedMessages:
    """SpecPC on a conversation's context, read by the draft in its own template (call with the engine lock
    held); ``window``: what the compressed conversation must fit; ``auto``: ``budget="auto"`` (``auto_config``)."""
    draft = engine.draft
    count_tokenizer = engine.count_tokenizer
    template = "chat" if has_chat_template(draft.tokenizer) else "raw"
    segments = drop_lead(chat.render(messages, lay, draft.tokenizer, template), draft.tokenizer)
    question = chat.reread_question(messages, lay)
    if question:  # the draft's window should read the question: once more, at the end, for the draft only
        segments = segments + [Segment("\n\n", "separator"), Segment(question, "question")]
    why = ""
    if window is not None:
        cfg, why = fitted(
            engine, cfg, Fit(segments, "raw", window, full_ids=tokenize(count_tokenizer, segments).ids), auto
        )
    indices = chat.rendered_indices(segments, lay)
    counts = "target tokenizer" if engine.target else "draft tokenizer"
    if not indices:
        return _nothing_to_compress(engine, messages, segments, cfg)
    shortened = run_specpc(engine, segments, lay.chunks, cfg, "raw", count_tokenizer)
    stats = CompressionStats(
        counts,
        original_tokens=shortened.original_tokens,
        compressed_tokens=shortened.compressed_tokens,
        draft_original_tokens=shortened.draft_original_tokens,
        draft_kept_tokens=shortened.draft_kept_tokens,
        draft_blocks=shortened.draft_blocks,
        draft_cached_tokens=shortened.draft_cached_tokens,
        seconds=dict(shortened.seconds),
        left_whole=why,
        unsupported=shortened.unsupported,
    )
    for i in sorted(indices):
        before = count_tokens(count_tokenizer, "".join(c.text for c in lay.chunks if c.id == i))
        after = count_tokens(
            count_tokenizer, "".join(shortened.chunks[k].text for k, c in enumerate(lay.chunks) if c.id == i)
        )
        stats.messages.append(MessageStats(i, before, after / max(1, before)))
    return chat.CompressedMessages(chat.rebuild(messages, lay, shortened, indices), stats, shortened)


def _nothing_to_compress(engine: EngineState, messages, segments, cfg: SpecPCConfig) -> chat.CompressedMessages:
    """The conversation unchanged, with a warning when it is over the budget."""
    n = sum(count_tokens(engine.draft.tokenizer, s.text) for s in segments if s.in_output)
    budget = None if cfg.ratio is not None else cfg.budget_for(n)
    stats = CompressionStats("draft tokenizer", n, n, seconds={"draft": 0.0, "select": 0.0})
    if budget is not None and n > budget:
        stats.warning = (
            f"the conversation has {n} draft tokens, over the budget of {budget}, but no "
            "retrieved context to compress (see draft_rag.messages); sent whole"
        )
        _warn_once(stats.warning)
    return chat.CompressedMessages([dict(m) for m in messages], stats, None)


def _kv_prefill(engine: EngineState, plan: Plan, text, ids, compressed, n_look: int, stats: GenerationStats,
                drafted: Drafted) -> tuple[Prefill, Drafted]:  # fmt: skip
    """The evicting prefill of a KV method: SpecKV's lookahead (SpecPC's, ``drafted``'s, or drafted now) joins the
    window; and what the draft produced, with that lookahead."""
    method = plan.method
    cfg = engine.speckv
    if not plan.budget.is_unset:
        cfg = cfg.replace(budget=plan.budget.tokens, ratio=plan.budget.ratio)
    budget_n = cfg.budget_for(len(ids))
    look = list(compressed.lookahead_ids) if compressed is not None else []
    if method.drafts_lookahead and n_look and budget_n < len(ids):
        if not look:  # SpecPC did not run the draft (prompt within its budget), or plain speckv
            if not drafted.lookahead:
                drafted = _draft_lookahead(engine, method, text, n_look, drafted, stats)
            look = list(drafted.lookahead)
            stats.seconds["draft"] = stats.seconds.get("draft", 0.0) + drafted.lookahead_seconds
        draft = engine.draft
        look = speckv.lookahead_for_target(
            draft.tokenizer, engine.target.tokenizer, look, eos_ids(draft.model, draft.tokenizer)
        )
    else:
        look = []
    stats.lookahead_tokens = len(look)
    run = functools.partial(
        speckv.compressed_prefill,
        lookahead_ids=look,
        budget=budget_n,
        scorer=method.make_scorer(cfg),
        window=cfg.window_size,
        horizon=plan.sampling.max_new_tokens,
        sparse=plan.sparse,
    )
    return functools.partial(_with_stats, run, stats), drafted


def _draft_lookahead(engine: EngineState, method, text, n_look: int, drafted: Drafted, stats) -> Drafted:
    """SpecKV's lookahead, drafted over the (compressed) prompt; ``drafted`` with it and its seconds."""
    draft = engine.draft
    t0 = time.perf_counter()
    draft_ids, context_end = text.draft_prompt()
    if engine.draft_window and len(draft_ids) + n_look > engine.draft_window:
        raise ValueError(
            f"{method}: the draft would read {len(draft_ids)} prompt tokens + {n_look} lookahead tokens, "
            f"more than its context window of {engine.draft_window}; use method='speckv-pc' (SpecPC "
            "shortens the prompt first) or a draft with a longer window"
        )
    # the context's KV up to SpecPC's window before its end is shared with SpecPC's passes and follow-ups
    prefix = max(0, context_end - engine.specpc.for_draft(draft.model).window_size)
    cache, start, stats.draft_cached_tokens = cached_prefix(draft.model, draft_ids, prefix, engine.context_cache)
    eos = eos_ids(draft.model, draft.tokenizer)
    look = speckv.draft_lookahead(draft.model, draft_ids, n_look, eos, cache=cache, start=start)
    return dataclasses.replace(drafted, lookahead=tuple(look), lookahead_seconds=time.perf_counter() - t0)


def without_reread(result: CompressedPrompt, request: PromptInput, engine: EngineState) -> CompressedPrompt:
    """SpecPC's result on ``request.draft_segments()`` without the question the draft read again at its end
    (protected, so kept word for word): the text, spans, scores and token counts of the prompt alone."""
    if not request.reread:
        return result
    tail = CHUNK_SEPARATOR + request.reread
    if not result.text.endswith(tail):
        raise RuntimeError("SpecPC did not keep the question read again at the end of the prompt")
    cut, text = len(result.original_text) - len(tail), result.text[: len(result.text) - len(tail)]
    counter, n_tail = engine.count_tokenizer, count_tokens(engine.draft.tokenizer, tail)
    return dataclasses.replace(
        result,
        text=text,
        original_text=result.original_text[:cut],
        kept_spans=[(s, min(e, cut)) for s, e in result.kept_spans if s < cut],
        token_scores=[t for t in result.token_scores if t[1] <= cut],
        original_tokens=count_tokens(counter, result.original_text[:cut]),
        compressed_tokens=count_tokens(counter, text),
        draft_original_tokens=result.draft_original_tokens - n_tail,
        draft_kept_tokens=result.draft_kept_tokens - n_tail,
    )


def compressed_segments(shortened: CompressedPrompt, segments: list[Segment]) -> list[Segment]:
    """The compressed text as untrusted content, with the answer prefix (kept whole) after it."""
    prefix = "".join(s.text for s in segments if s.role == "answer_prefix")
    body = shortened.text[: len(shortened.text) - len(prefix)] if prefix else shortened.text
    return [Segment(body, "context")] + ([Segment(prefix, "answer_prefix")] if prefix else [])


def drop_lead(segments: list[Segment], tokenizer) -> list[Segment]:
    """Rendered segments without the leading special tokens (e.g. ``<bos>``) that ``wrap(..., "raw")`` adds."""
    lead = template_parts(tokenizer, "raw")[0]
    if lead and segments and segments[0].role == "template" and segments[0].text.startswith(lead):
        return [Segment(segments[0].text[len(lead) :], "template")] + segments[1:]
    return segments


def _with_stats(run, stats: GenerationStats, model, ids):
    """Run a (state, KVStats) prefill and copy its KV figures and timings into ``stats``."""
    state, kv = run(model, ids)
    stats.kv_bytes, stats.kv_bytes_full, stats.kv_entries = kv.kv_bytes, kv.kv_bytes_full, kv.entries
    stats.seconds.update(prefill=kv.seconds["prefill"], kv_select=kv.seconds["select"])
    stats.sparse_layers = kv.sparse_layers
    return state


_warned: set[str] = set()


def _warn_once(message: str, key: str = "over budget, nothing compressible") -> None:
    """Log ``message`` as a warning the first time a warning of this ``key`` comes up in the process."""
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)
