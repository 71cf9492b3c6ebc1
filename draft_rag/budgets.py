"""How much SpecPC keeps per request: a call's budget over the configured one, SpecKV-PC's prompt stage,
``budget="auto"`` fitted to the target's window (and whether compressing a prompt that fits pays), and the
reason in words that the stats report."""

from __future__ import annotations

from dataclasses import dataclass

from .config import (
    AUTO_MARGIN,
    AUTO_PAY_RATIO,
    DEFAULT_BUDGET,
    DEFAULT_COVERAGE,
    DEFAULT_PC_BUDGET,
    SPECKV_PC_KERNEL,
    SPECKV_PC_LOOKAHEAD,
    Budget,
    SpecPCConfig,
    check_int,
)
from .options import Plan
from .payoff import why_whole
from .prompt import tokenize, wrap
from .state import EngineState


def request_specpc(engine: EngineState, plan: Plan, n_look: int) -> SpecPCConfig:
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
        if fills_window(engine, plan):
            asked = "budget='auto'" if plan.budget.auto else "no budget given"
            parts.append(f"prompt: {asked}: fit the target's {window}-token window")
        elif is_adaptive(engine, plan):
            coverage = cfg.coverage or DEFAULT_COVERAGE
            parts.append(f"prompt: adaptive (coverage {coverage}), capped the target's {window}-token window")
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


def fills_window(engine: EngineState, plan: Plan) -> bool:
    """SpecPC fills the target's window: ``budget="auto"``, or plain SpecPC with no budget in the call nor in
    SpecPCConfig (SpecKV-PC's prompt budget has its own default)."""
    if plan.budget.auto:
        return True
    cfg = engine.specpc
    unset = plan.budget.is_unset and cfg.budget is None and cfg.ratio is None and cfg.coverage is None
    return unset and not plan.method.evicts_kv


def is_adaptive(engine: EngineState, plan: Plan) -> bool:
    """SpecPC sizes its budget from the draft's attention (then the target's window is its ceiling)."""
    if plan.method.evicts_kv:
        return False
    return plan.budget.adaptive or (plan.budget.is_unset and engine.specpc.coverage is not None)


def capped(cfg: SpecPCConfig, room: int) -> SpecPCConfig:
    """``cfg`` kept capped ``room`` draft tokens: its budget (``auto``), or its ceiling when adaptive."""
    if cfg.coverage is None:
        return cfg.replace(budget=room)
    return cfg.replace(
        ceiling=min(cfg.ceiling or room, room), floor=None if cfg.floor is None else min(cfg.floor, room)
    )


@dataclass(frozen=True)
class Fit:
    """What a compressed prompt must fit: its ``segments`` in ``template`` (with ``system``), into ``window`` target
    tokens (None: the target's) less ``reserve`` (the new tokens); ``full_ids``: its target ids, when known."""

    segments: list
    template: str
    window: int | None
    reserve: int = 0
    system: str | None = None
    full_ids: list[int] | None = None


def fitted(engine: EngineState, cfg: SpecPCConfig, fit: Fit, auto: bool) -> tuple[SpecPCConfig, str]:
    """``cfg`` fitted to ``fit``: ``budget="auto"`` (``auto_config``, with why a prompt is left whole), else capped
    at what fits (``budget="adaptive"`` within a window)."""
    return auto_config(engine, cfg, fit) if auto else (capped(cfg, fit_budget(engine, fit)), "")


def auto_config(engine: EngineState, cfg: SpecPCConfig, fit: Fit) -> tuple[SpecPCConfig, str]:
    """``budget="auto"``: SpecPC's settings and, for a prompt left whole, why (else "").

    A prompt past the window is compressed to fit it (``fit_budget``). One that fits is compressed to ``cfg``'s own
    budget (``AUTO_PAY_RATIO`` of its context when it has none) only when that pays (``payoff.why_whole``).
    """
    room, n_draft, n_target = _window_room(engine, fit)
    if n_draft > room:
        return capped(cfg, room), ""
    n_context = len(tokenize(engine.draft.tokenizer, [s for s in fit.segments if s.role == "context"]).ids)
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
        return capped(cfg, room), reason
    return (capped(paying, room) if paying.coverage is not None else cfg.replace(budget=min(room, fewest))), ""


def fit_budget(engine: EngineState, fit: Fit) -> int:
    """Draft-token budget whose compressed text fits ``fit.window - fit.reserve`` tokens of the target (or, with no
    target, of the model behind the window), template included, with a margin for re-tokenisation."""
    return _window_room(engine, fit)[0]


def _window_room(engine: EngineState, fit: Fit) -> tuple[int, int, int]:
    """``fit_budget``'s budget, with the prompt's draft tokens (its text) and target tokens (template included)."""
    window = fit.window or engine.target_window
    if window is None:
        raise ValueError(
            "budget='auto' needs a context window: pass context_window=... (tokens the compressed "
            "prompt must fit) or give the engine a target"
        )
    count_tokenizer = engine.count_tokenizer
    body = [s for s in fit.segments if s.in_output]
    text_tokens = len(tokenize(count_tokenizer, body).ids)
    full_ids = fit.full_ids
    if full_ids is None:
        full_ids = tokenize(count_tokenizer, wrap(fit.segments, count_tokenizer, fit.template, fit.system)).ids
    wrapped = len(full_ids)
    room = window - fit.reserve - (wrapped - text_tokens)
    draft_tokens = len(tokenize(engine.draft.tokenizer, body).ids)
    budget = int(room * draft_tokens / max(1, text_tokens) * AUTO_MARGIN)
    if budget < 1:
        raise ValueError(
            f"budget='auto': a context window of {window} tokens leaves no room for the prompt "
            f"after {fit.reserve} new tokens and {wrapped - text_tokens} template tokens"
        )
    return budget, draft_tokens, wrapped


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
