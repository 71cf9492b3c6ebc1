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
from dataclasses import dataclass, field

from . import messages as chat
from . import methods, speckv
from .config import (
    AUTO_MARGIN,
    AUTO_PAY_RATIO,
    DEFAULT_BUDGET,
    DEFAULT_COVERAGE,
    DEFAULT_PC_BUDGET,
    SPECKV_PC_KERNEL,
    SPECKV_PC_LOOKAHEAD,
    Budget,
    SparsePrefillConfig,
    SpecPCConfig,
    check_int,
)
from .generation import Prefill, Sampling, eos_ids
from .inputs import ChatInput, PromptInput
from .methods import Method
from .options import GenerationOptions
from .payoff import why_whole
from .prompt import CHUNK_SEPARATOR, Segment, count_tokens, has_chat_template, template_parts, tokenize, wrap
from .scoring import cached_prefix
from .specpc import CompressedPrompt, compress
from .state import EngineState
from .stats import CompressionStats, GenerationStats, MessageStats

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """How one request runs: the method, its budgets (parsed), the lookahead and the decoding settings.

    ``budget``: the prompt budget for SpecPC, the KV budget for the KV methods; ``pc_budget``: SpecKV-PC's
    prompt budget. ``lookahead``: SpecKV's draft lookahead (None: the configured or official default).
    ``sparse``: the target's prefill is vertical-slash sparse (None: dense).
    """

    method: Method
    sampling: Sampling
    budget: Budget = field(default_factory=Budget)
    pc_budget: Budget = field(default_factory=Budget)
    lookahead: int | None = None
    template: str = "chat"
    sparse: SparsePrefillConfig | None = None

    @classmethod
    def of(cls, options: GenerationOptions, method: str, template: str, sparse: SparsePrefillConfig | None) -> Plan:
        """``options`` resolved against an engine's defaults (its ``method``, ``template`` and ``sparse`` prefill)."""
        chosen, budget = methods.get(options.method or method), options.prompt_budget
        if (budget.auto or budget.adaptive) and chosen.evicts_kv:
            what = "auto' (fit the target's window)" if budget.auto else "adaptive' (sized by the draft's attention)"
            raise ValueError(f"budget='{what} is for method='specpc', got method={chosen}")
        sparse = sparse if options.sparse_prefill is None else options.sparse
        return cls(chosen, options.sampling, budget, options.pc, options.lookahead_tokens,
                   options.template or template, sparse)  # fmt: skip


@dataclass
class Prepared:
    """A request ready to decode: the target's prompt ids, its prefill, SpecPC's result and the stats so far."""

    ids: list[int]
    prefill: Prefill
    compressed: CompressedPrompt | None
    stats: GenerationStats


def prepare(
    engine: EngineState, request: PromptInput | ChatInput, plan: Plan, stats: GenerationStats | None = None
) -> Prepared:
    """Compress (SpecPC methods), tokenise for the target, and plan the prefill (KV methods evict); ``stats``
    (a new one by default) is filled as the steps run. Call with the engine lock held."""
    method, sampling = plan.method, plan.sampling
    kind = _PromptText if isinstance(request, PromptInput) else _Conversation
    text = kind(engine, request, plan)
    stats = stats if stats is not None else GenerationStats(method.name)
    stats.budget_reason = budget_reason(engine, plan)
    ids = text.target_ids()
    stats.original_tokens = len(ids)
    if not method.shortens_prompt:  # nothing will shorten the prompt: refuse it before any draft work
        check_fits(engine, len(ids), sampling.max_new_tokens, plan.lookahead)
    compressed = None
    n_look = lookahead_count(engine, plan) if method.drafts_lookahead else 0
    if method.shortens_prompt:
        compressed = text.compress(_specpc_config(engine, plan, n_look), stats)
        ids = text.target_ids()
    prefill = functools.partial(_with_stats, functools.partial(speckv.plain_prefill_stats, sparse=plan.sparse), stats)
    if method.evicts_kv:
        prefill = _kv_prefill(engine, plan, text, ids, compressed, n_look, stats)
    check_fits(engine, len(ids), sampling.max_new_tokens, stats.lookahead_tokens)
    stats.prompt_tokens = len(ids)
    return Prepared(ids, prefill, compressed, stats)


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

    def target_ids(self) -> list[int]:
        target = self.engine.target.tokenizer
        return tokenize(target, wrap(self.segments, target, self.plan.template, self.system)).ids

    def draft_prompt(self) -> tuple[list[int], int]:
        draft = self.engine.draft.tokenizer
        return _ids_and_context_end(draft, wrap(self.segments, draft, self.plan.template, self.system))

    def compress(self, cfg: SpecPCConfig, stats: GenerationStats) -> CompressedPrompt:
        engine, plan = self.engine, self.plan
        fit = (self.segments, plan.template, engine.target_window, plan.sampling.max_new_tokens, self.system)
        if _fits_window(engine, plan):
            cfg, stats.left_whole = auto_config(engine, cfg, *fit, self.target_ids())
        elif _adaptive(engine, plan) and engine.target_window:
            cfg = within(cfg, fit_budget(engine, *fit, self.target_ids()))
        shortened = compress(
            engine.draft.model,
            engine.draft.tokenizer,
            self.request.draft_segments(),
            self.chunks,
            cfg,
            template=plan.template,
            target_tokenizer=engine.target.tokenizer,
            block_size=engine.block_size,
            context_cache=engine.context_cache,
        )
        shortened = without_reread(shortened, self.request, engine)
        stats.draft_blocks, stats.draft_cached_tokens = shortened.draft_blocks, shortened.draft_cached_tokens
        stats.unsupported = shortened.unsupported
        stats.seconds.update(draft=shortened.seconds["draft"], select=shortened.seconds["select"])
        self.segments = compressed_segments(shortened, self.segments)
        return shortened


class _Conversation:
    """A ``ChatInput`` in the target's chat template; compression replaces the retrieved context in messages."""

    def __init__(self, engine: EngineState, request: ChatInput, plan: Plan):
        chat.check_text_only(request.messages, request.layout)
        self.engine, self.plan = engine, plan
        self.messages, self.layout = request.messages, request.layout

    def target_ids(self) -> list[int]:
        target = self.engine.target.tokenizer
        return tokenize(target, chat.render(self.messages, self.layout, target, self.plan.template)).ids

    def draft_prompt(self) -> tuple[list[int], int]:
        draft = self.engine.draft.tokenizer
        template = self.plan.template if has_chat_template(draft) else "raw"
        segments = drop_lead(chat.render(self.messages, self.layout, draft, template), draft)
        return _ids_and_context_end(draft, wrap(segments, draft, "raw"))

    def compress(self, cfg: SpecPCConfig, stats: GenerationStats) -> CompressedPrompt | None:
        engine, plan = self.engine, self.plan
        window = engine.target_window
        fits = _fits_window(engine, plan) or _adaptive(engine, plan)
        fit = window - plan.sampling.max_new_tokens if window and fits else None
        compressed_chat = compress_conversation(
            engine, self.messages, self.layout, cfg, fit, auto=_fits_window(engine, plan)
        )
        stats.compression = compressed_chat.stats
        stats.left_whole = compressed_chat.stats.left_whole or ""
        stats.draft_blocks = compressed_chat.stats.draft_blocks or 0
        stats.draft_cached_tokens = compressed_chat.stats.draft_cached_tokens or 0
        stats.unsupported = compressed_chat.stats.unsupported or 0
        stats.seconds.update(compressed_chat.stats.seconds)
        self.messages = compressed_chat.messages
        self.layout = chat.layout(self.messages)
        return compressed_chat.compressed


def compress_conversation(
    engine: EngineState,
    messages: list[dict],
    lay: chat.Layout,
    cfg: SpecPCConfig,
    fit: int | None = None,
    auto: bool = False,
) -> chat.CompressedMessages:
    """SpecPC on a conversation's context, read by the draft in its own template (call with the engine lock
    held); ``fit``: the window the compressed conversation must fit; ``auto``: ``budget="auto"`` (``auto_config``)."""
    draft = engine.draft
    count_tokenizer = engine.count_tokenizer
    template = "chat" if has_chat_template(draft.tokenizer) else "raw"
    segments = drop_lead(chat.render(messages, lay, draft.tokenizer, template), draft.tokenizer)
    question = chat.reread_question(messages, lay)
    if question:  # the draft's window should read the question: once more, at the end, for the draft only
        segments = segments + [Segment("\n\n", "separator"), Segment(question, "question")]
    why = None
    if fit is not None:
        full_ids = tokenize(count_tokenizer, segments).ids
        if auto:
            cfg, why = auto_config(engine, cfg, segments, "raw", fit, 0, full_ids=full_ids)
        else:
            cfg = within(cfg, fit_budget(engine, segments, "raw", fit, 0, full_ids=full_ids))
    indices = chat.rendered_indices(segments, lay)
    counts = "target tokenizer" if engine.target else "draft tokenizer"
    if not indices:
        return _nothing_to_compress(engine, messages, segments, cfg)
    shortened = compress(
        draft.model,
        draft.tokenizer,
        segments,
        lay.chunks,
        cfg,
        template="raw",
        target_tokenizer=count_tokenizer,
        block_size=engine.block_size,
        context_cache=engine.context_cache,
    )
    stats = CompressionStats(
        counts,
        original_tokens=shortened.original_tokens,
        compressed_tokens=shortened.compressed_tokens,
        draft_original_tokens=shortened.draft_original_tokens,
        draft_kept_tokens=shortened.draft_kept_tokens,
        draft_blocks=shortened.draft_blocks,
        draft_cached_tokens=shortened.draft_cached_tokens,
        seconds=dict(shortened.seconds),
        left_whole=why or None,
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


def _kv_prefill(engine: EngineState, plan: Plan, text, ids, compressed, n_look: int, stats: GenerationStats):
    """The evicting prefill of a KV method: SpecKV's lookahead (SpecPC's, or drafted now) joins the window."""
    method = plan.method
    cfg = engine.speckv
    if not plan.budget.is_unset:
        cfg = cfg.replace(budget=plan.budget.tokens, ratio=plan.budget.ratio)
    budget_n = cfg.budget_for(len(ids))
    look = list(compressed.lookahead_ids) if compressed is not None else []
    if method.drafts_lookahead and n_look and budget_n < len(ids):
        draft = engine.draft
        eos = eos_ids(draft.model, draft.tokenizer)
        if not look:  # SpecPC did not run the draft (prompt within its budget), or plain speckv
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
            store = engine.context_cache
            cache, start, stats.draft_cached_tokens = cached_prefix(draft.model, draft_ids, prefix, store)
            look = speckv.draft_lookahead(draft.model, draft_ids, n_look, eos, cache=cache, start=start)
            stats.seconds["draft"] = stats.seconds.get("draft", 0.0) + time.perf_counter() - t0
        look = speckv.lookahead_for_target(draft.tokenizer, engine.target.tokenizer, look, eos)
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
    return functools.partial(_with_stats, run, stats)


def _specpc_config(engine: EngineState, plan: Plan, n_look: int) -> SpecPCConfig:
    """SpecPC's settings for this request (inside SpecKV-PC: ``speckv_pc_stage``)."""
    if not plan.method.evicts_kv:
        return specpc_for(engine.specpc, plan.budget)
    return speckv_pc_stage(engine.specpc, plan.pc_budget, n_look)


def specpc_for(specpc: SpecPCConfig, budget: Budget) -> SpecPCConfig:
    """``specpc`` with a call's budget in place of its own (``auto`` is fitted later; ``adaptive`` sets coverage)."""
    if budget.adaptive:
        return specpc.replace(coverage=specpc.coverage or DEFAULT_COVERAGE)
    if budget.auto or budget.is_unset:
        return specpc
    return specpc.replace(budget=budget.tokens, ratio=budget.ratio)


def speckv_pc_stage(specpc: SpecPCConfig, pc_budget: Budget, n_look: int = SPECKV_PC_LOOKAHEAD) -> SpecPCConfig:
    """SpecKV-PC's SpecPC stage as in the official configs: kernel = neighbours = 32 unless set, ``n_look``
    lookahead tokens drafted (SpecKV's lookahead), and DEFAULT_PC_BUDGET when no prompt budget is given."""
    cfg = specpc.replace(budget=pc_budget.tokens, ratio=pc_budget.ratio, lookahead_tokens=n_look)
    if cfg.kernel_size is None:
        cfg = cfg.replace(kernel_size=SPECKV_PC_KERNEL)
    if pc_budget.is_unset:
        cfg = cfg.replace(budget=DEFAULT_PC_BUDGET)
    return cfg


def budget_reason(engine: EngineState, plan: Plan) -> str:
    """Which budget a request applies and why, in words (the stats' ``budget_reason``)."""
    method, window = plan.method, engine.target_window
    parts = []
    if method.shortens_prompt and method.evicts_kv:
        pc = plan.pc_budget
        parts.append(f"prompt: {_given(pc, 'pc_') or f'pc_budget={DEFAULT_PC_BUDGET} draft tokens (the default)'}")
    elif method.shortens_prompt:
        cfg = engine.specpc
        if _fits_window(engine, plan):
            asked = "budget='auto'" if plan.budget.auto else "no budget given"
            parts.append(f"prompt: {asked}: fit the target's {window}-token window")
        elif _adaptive(engine, plan):
            coverage = cfg.coverage or DEFAULT_COVERAGE
            parts.append(f"prompt: adaptive (coverage {coverage}), within the target's {window}-token window")
        else:
            own = f"SpecPCConfig(budget={cfg.budget})" if cfg.budget is not None else f"SpecPCConfig(ratio={cfg.ratio})"
            parts.append(f"prompt: {_given(plan.budget) or own}")
    if method.evicts_kv:
        kv = engine.speckv
        own = f"SpecKVConfig(budget={kv.budget})" if kv.budget is not None else f"SpecKVConfig(ratio={kv.ratio})"
        own = f"budget={DEFAULT_BUDGET} (the default)" if kv.budget is None and kv.ratio is None else own
        parts.append(f"KV: {_given(plan.budget) or own} entries per layer and KV head")
    return "; ".join(parts) or f"method={method.name!r}: the prompt is read whole"


def _given(budget: Budget, prefix: str = "") -> str:
    """A budget given in the call, in words ("" when none was)."""
    if budget.tokens is not None:
        return f"{prefix}budget={budget.tokens} (given)"
    return f"{prefix}ratio={budget.ratio} (given)" if budget.ratio is not None else ""


def _fits_window(engine: EngineState, plan: Plan) -> bool:
    """SpecPC fills the target's window: ``budget="auto"``, or plain SpecPC with no budget in the call nor in
    SpecPCConfig (SpecKV-PC's prompt budget has its own default)."""
    if plan.budget.auto:
        return True
    cfg = engine.specpc
    unset = plan.budget.is_unset and cfg.budget is None and cfg.ratio is None and cfg.coverage is None
    return unset and not plan.method.evicts_kv


def _adaptive(engine: EngineState, plan: Plan) -> bool:
    """SpecPC sizes its budget from the draft's attention (then the target's window is its ceiling)."""
    if plan.method.evicts_kv:
        return False
    return plan.budget.adaptive or (plan.budget.is_unset and engine.specpc.coverage is not None)


def within(cfg: SpecPCConfig, room: int) -> SpecPCConfig:
    """``cfg`` kept within ``room`` draft tokens: its budget (``auto``), or its ceiling when adaptive."""
    if cfg.coverage is None:
        return cfg.replace(budget=room)
    return cfg.replace(
        ceiling=min(cfg.ceiling or room, room), floor=None if cfg.floor is None else min(cfg.floor, room)
    )


def auto_config(
    engine: EngineState,
    cfg: SpecPCConfig,
    segments,
    template: str,
    window: int | None,
    reserve: int,
    system: str | None = None,
    full_ids: list[int] | None = None,
) -> tuple[SpecPCConfig, str]:
    """``budget="auto"``: SpecPC's settings and, for a prompt left whole, why (else "").

    A prompt past the window is compressed to fit it (``fit_budget``). One that fits is compressed to ``cfg``'s own
    budget (``AUTO_PAY_RATIO`` of its context when it has none) only when that pays (``payoff.why_whole``).
    """
    room, n_draft, n_target = _room(engine, segments, template, window, reserve, system, full_ids)
    if n_draft > room:
        return within(cfg, room), ""
    n_context = len(tokenize(engine.draft.tokenizer, [s for s in segments if s.role == "context"]).ids)
    unset = cfg.budget is None and cfg.ratio is None and cfg.coverage is None
    paying = cfg.replace(ratio=AUTO_PAY_RATIO) if unset else cfg
    protected = n_draft - n_context
    if paying.coverage is not None:
        fewest = max(paying.floor or 0, protected)
    elif paying.ratio is not None:
        fewest = protected + paying.budget_for(n_context)
    else:
        fewest = min(paying.budget_for(n_draft), n_draft)
    reason = why_whole(engine, n_draft, n_target, fewest, n_context, cfg.min_tokens)
    if reason:
        return within(cfg, room), reason
    return (within(paying, room) if paying.coverage is not None else cfg.replace(budget=min(room, fewest))), ""


def lookahead_count(engine: EngineState, plan: Plan) -> int:
    """SpecKV's lookahead length: the call's, else SpecKVConfig's, else the official default (SpecKV drafts
    ``max_new_tokens``; SpecKV-PC reuses the 20 tokens its SpecPC stage drafts)."""
    n_look = plan.lookahead if plan.lookahead is not None else engine.speckv.lookahead_tokens
    if n_look is None:
        n_look = SPECKV_PC_LOOKAHEAD if plan.method.shortens_prompt else plan.sampling.max_new_tokens
    check_int("lookahead_tokens", n_look, 0)
    return n_look


def check_fits(engine: EngineState, n_prompt: int, max_new_tokens: int, lookahead: int | None = 0) -> None:
    """Refuse a target prompt that, with what will be generated (or drafted ahead), exceeds its window."""
    window, extra = engine.target_window, max(max_new_tokens, lookahead or 0)
    if window and n_prompt + extra > window:
        ahead = f" (lookahead {lookahead} tokens)" if extra > max_new_tokens else ""
        raise ValueError(
            f"the target's context window is {window} tokens, but the prompt is {n_prompt} tokens and "
            f"max_new_tokens={max_new_tokens}{ahead}: {n_prompt + extra} > {window}. Compress it "
            "(method='specpc' with budget='auto' or a smaller budget, or 'speckv-pc') or lower max_new_tokens"
        )


def fit_budget(
    engine: EngineState,
    segments,
    template: str,
    window: int | None,
    reserve: int,
    system: str | None = None,
    full_ids: list[int] | None = None,
) -> int:
    """Draft-token budget whose compressed text fits ``window - reserve`` tokens of the target (or, with no
    target, of the model behind ``window``), template included, with a margin for re-tokenisation."""
    return _room(engine, segments, template, window, reserve, system, full_ids)[0]


def _room(engine, segments, template, window, reserve, system=None, full_ids=None) -> tuple[int, int, int]:
    """``fit_budget``'s budget, with the prompt's draft tokens (its text) and target tokens (template included)."""
    window = window or engine.target_window
    if window is None:
        raise ValueError(
            "budget='auto' needs a context window: pass context_window=... (tokens the compressed "
            "prompt must fit) or give the engine a target"
        )
    count_tokenizer = engine.count_tokenizer
    body = [s for s in segments if s.in_output]
    text_tokens = len(tokenize(count_tokenizer, body).ids)
    if full_ids is None:
        full_ids = tokenize(count_tokenizer, wrap(segments, count_tokenizer, template, system)).ids
    wrapped = len(full_ids)
    room = window - reserve - (wrapped - text_tokens)
    draft_tokens = len(tokenize(engine.draft.tokenizer, body).ids)
    budget = int(room * draft_tokens / max(1, text_tokens) * AUTO_MARGIN)
    if budget < 1:
        raise ValueError(
            f"budget='auto': a context window of {window} tokens leaves no room for the prompt "
            f"after {reserve} new tokens and {wrapped - text_tokens} template tokens"
        )
    return budget, draft_tokens, wrapped


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
