"""Run one method at one budget over RULER records through ``DraftEngine.generate``; score and time it."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field

from .. import methods
from ..engine import METHODS, DraftEngine
from ..faithfulness import unsupported
from ..inputs import PromptInput
from .data import METRICS, Record, chunked, follow_ups, split_input

logger = logging.getLogger(__name__)

EXTERNAL_METHODS = tuple(methods.BENCH_METHODS)  # run by this package, not by the engine
# Prompt compressors: budget/ratio is the prompt budget (draft tokens or a fraction). speckv-pc has two
# budgets: ratio is SpecPC's prompt ratio (the engine's pc_ratio) and budget its KV entries per head.
DEFAULT_MAX_NEW_TOKENS = 48


def kind(method: str) -> tuple[bool, bool]:
    """(shortens the prompt, evicts KV entries) for an engine method or one of the bench's own prompt compressors."""
    m = methods.bench_get(method)
    return m.shortens_prompt, m.evicts_kv


def all_methods() -> tuple[str, ...]:
    """The engine's methods (as they exist in this install) plus the bench's own runners."""
    return tuple(METHODS) + EXTERNAL_METHODS


def check_method(method: str) -> None:
    if method not in all_methods():
        raise ValueError(f"--method must be one of {', '.join(all_methods())}, got {method!r}")


@dataclass
class EvalResult:
    method: str
    budget: int | None
    ratio: float | None
    n: int
    score: float
    avg_input_tokens: float
    avg_kept_tokens: float
    seconds: dict
    kv_bytes: float | None
    metric: str = "all"
    scores: dict = field(default_factory=dict)  # the mean under each metric ("all", "part"), 0-100
    sparse_layers: float = 0.0  # mean target layers per record that prefilled sparse
    follow_up: dict | None = None  # the records' follow-up questions (``follow_up_summary``), when asked
    unsupported: int = 0  # statements of the compressed prompts their sources do not make, all records together
    records: list = field(default_factory=list)

    def to_dict(self, with_records: bool = False) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "records"}
        if with_records:
            out["records"] = self.records
        return out


def kv_bytes_per_entry(model) -> int:
    """Bytes one token's keys and values take across all layers (used when the engine reports no KV size)."""
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    elem = next(model.parameters()).element_size()
    return 2 * cfg.num_hidden_layers * heads * head_dim * elem


def kept_tokens(method: str, stats) -> float:
    """Prompt tokens the target reads (prompt compressors) or prompt KV entries it keeps per layer (KV methods)."""
    entries = getattr(stats, "kv_entries", None)
    shortens, evicts = kind(method)
    if evicts and not shortens and entries:
        return float(max(entries))
    return float(stats.prompt_tokens)


def evaluate(
    engine: DraftEngine,
    records: list[Record],
    method: str,
    *,
    budget: int | None = None,
    ratio: float | None = None,
    coverage: float | None = None,
    template: str | None = None,
    max_new_tokens: int | None = None,
    progress: bool = True,
    llmlingua=None,
    desc: str | None = None,
    metric: str = "all",
    sparse_prefill: bool = False,
    ask_follow_ups: bool = False,
    chunk_tokens: int | None = None,
    warm_chunks: bool = False,
) -> EvalResult:
    """Greedy answers for ``records``; RULER's score (0-100) under ``metric`` and mean per-record timings.

    ``metric`` is ``"all"`` (string-match-all) or ``"part"`` (string-match-part, RULER's for qa); the result
    keeps the mean under both in ``scores``.
    The record's input is split into a protected instruction line, the context and a protected question
    line (``split_input``); the answer prefix follows the chat turn, as RULER does. ``llmlingua`` is a
    ``LLMLinguaClient`` for method ``llmlingua``. ``coverage`` (``specpc`` only) runs ``budget="adaptive"`` at
    that coverage instead of a fixed budget. ``sparse_prefill``: the target prefills vertical-slash sparse.
    Every record's first question reads its context cold (the engine's context cache is emptied before it);
    with ``ask_follow_ups`` the record's follow-up questions (``data.follow_ups``) are asked next over the same
    context, and the result's ``follow_up`` sums them up. ``chunk_tokens``: the context goes in as chunks of about
    that many draft tokens (``data.chunked``); ``warm_chunks``: they are read into the emptied chunk cache first
    (the record's cold pass, timed as ``seconds["warm"]``), then the question is asked over the cache.
    """
    from tqdm.auto import tqdm

    _check_evaluate(method, metric, llmlingua, coverage, budget, ratio)
    if chunk_tokens and methods.bench_get(method).external:
        raise ValueError(f"method {method!r} compresses one text: chunk_tokens is for the engine's methods")
    per_entry = kv_bytes_per_entry(engine.target.model)
    rows, sums = [], {"draft": 0.0, "target": 0.0, "total": 0.0, **({"warm": 0.0} if warm_chunks else {})}
    bar = tqdm(
        records, desc=desc or f"{method} {budget or ratio or ''}".strip(), disable=not progress, unit="rec", leave=False
    )
    ask = functools.partial(
        _ask,
        engine,
        method=method,
        budget="adaptive" if coverage is not None else budget,
        ratio=ratio,
        template=template,
        max_new_tokens=max_new_tokens,
        llmlingua=llmlingua,
        sparse=sparse_prefill,
        chunk_tokens=chunk_tokens,
        warm=warm_chunks,
    )
    for rec in bar:
        engine.context_cache.clear()
        engine.chunk_cache.clear()
        with _coverage(engine, coverage):
            row = ask(rec)
            if ask_follow_ups:
                row["follow_ups"] = [ask(f) for f in follow_ups(rec)]
        for r in [row, *row.get("follow_ups", ())]:
            r["kv_bytes"] = r["kv_bytes"] or r["kept_tokens"] * per_entry
            r["score"] = r["scores"][metric]
        rows.append(row)
        for k in sums:
            sums[k] += row["seconds"][k]
        bar.set_postfix(score=f"{100 * sum(r['score'] for r in rows) / len(rows):.1f}")
    return _result(method, budget, ratio, rows, sums, metric, ask_follow_ups)


def _check_evaluate(method: str, metric: str, llmlingua, coverage, budget, ratio) -> None:
    """``evaluate``'s arguments: a known method and metric, a client for an external method, coverage alone."""
    check_method(method)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    if methods.bench_get(method).external and llmlingua is None:
        raise ValueError(f"method {method!r} needs an LLMLinguaClient (see draft_rag.bench.llmlingua)")
    if coverage is not None and (not methods.bench_get(method).adaptive or budget not in (None, "adaptive") or ratio):
        raise ValueError(f"coverage is an adaptive budget for specpc alone, got method={method!r}, {budget=}, {ratio=}")


def _result(method, budget, ratio, rows: list[dict], sums: dict, metric: str, ask_follow_ups: bool) -> EvalResult:
    """The means over ``rows`` (``evaluate``'s, one per record) as an ``EvalResult``."""
    n = len(rows)
    return EvalResult(
        method,
        budget,
        ratio,
        n,
        100 * sum(r["score"] for r in rows) / n,
        sum(r["input_tokens"] for r in rows) / n,
        sum(r["kept_tokens"] for r in rows) / n,
        {k: v / n for k, v in sums.items()},
        sum(r["kv_bytes"] for r in rows) / n,
        metric,
        {m: 100 * sum(r["scores"][m] for r in rows) / n for m in METRICS},
        sum(r["sparse_layers"] for r in rows) / n,
        follow_up_summary(rows, metric) if ask_follow_ups else None,
        sum(r["unsupported"] for r in rows),
        rows,
    )


def follow_up_summary(rows: list[dict], metric: str) -> dict | None:
    """Mean results of the follow-up questions in ``rows`` (evaluate's), beside their first questions'
    draft seconds; None when no record had any."""
    asked = [f for r in rows for f in r.get("follow_ups", ())]
    if not asked:
        return None
    mean = lambda get, rs=asked: sum(get(r) for r in rs) / len(rs)  # noqa: E731
    return {
        "questions": len(asked),
        "metric": metric,
        "score": 100 * mean(lambda r: r["scores"][metric]),
        "scores": {m: 100 * mean(lambda r, m=m: r["scores"][m]) for m in METRICS},
        "seconds": {k: mean(lambda r, k=k: r["seconds"][k]) for k in ("draft", "target", "total")},
        "first_draft_s": mean(lambda r: r["seconds"]["draft"], [r for r in rows if r.get("follow_ups")]),
        "cached_tokens": mean(lambda r: r["cached_tokens"]),
        "draft_tokens": mean(lambda r: r["draft_tokens"]),
        "predictions": [r["prediction"] for r in asked],
    }


@contextlib.contextmanager
def _coverage(engine: DraftEngine, coverage: float | None):
    """The engine with SpecPC's adaptive coverage set to ``coverage`` for the block (as it was after)."""
    saved = engine.specpc
    if coverage is not None:
        engine.specpc = saved.replace(coverage=coverage)
    try:
        yield engine
    finally:
        engine.specpc = saved


def _ask(engine, rec: Record, *, method, budget, ratio, template, max_new_tokens, llmlingua, sparse, **chunks) -> dict:
    """Ask one record; its answer, scores, token counts and seconds per stage."""
    instruction, context, question = split_input(rec.input)
    context, warm_s = record_chunks(engine, context, instruction, template, **chunks)
    args = dict(
        instruction=instruction or None,
        question=question or None,
        answer_prefix=rec.answer_prefix or None,
        template=template,
        max_new_tokens=max_new_tokens or rec.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        **({"sparse_prefill": True} if sparse else {}),
    )
    draft_s, external = 0.0, methods.bench_get(method).external
    if external:
        t0 = time.perf_counter()
        shortened = llmlingua.compress(context, instruction=instruction, question=question, budget=budget, ratio=ratio)
        draft_s = time.perf_counter() - t0
        n_unsupported = len(unsupported(shortened, context, gap=""))
        context = shortened
        gen = engine.generate(context, method="full", **args)
        gen.stats.original_tokens = _full_tokens(engine, rec, instruction, question, template)
    else:
        shortens, evicts = kind(method)
        kw = dict(budget=budget, ratio=ratio) if shortens or evicts else {}
        if shortens and evicts:  # speckv-pc: the ratio is SpecPC's, the budget SpecKV's
            kw = dict(pc_ratio=ratio, budget=budget)
        given = {"chunks": context} if isinstance(context, list) else {"prompt": context}
        gen = engine.generate(**given, method=method, **kw, **args)
        draft_s = sum(gen.stats.seconds.get(k, 0.0) for k in ("draft", "select"))
        n_unsupported = gen.stats.unsupported
    s = gen.stats
    target_s = s.seconds.get("target", 0.0)
    total = s.seconds.get("total", target_s) + (draft_s if external else 0.0)
    return {
        "index": rec.index,
        "scores": {m: fn(gen.text, rec.outputs) for m, fn in METRICS.items()},
        "prediction": gen.text,
        "outputs": list(rec.outputs),
        "input_tokens": s.original_tokens,
        "kept_tokens": kept_tokens(method, s),
        "kv_bytes": getattr(s, "kv_bytes", 0) or 0,
        "sparse_layers": s.sparse_layers,
        "unsupported": n_unsupported,
        "cached_tokens": s.draft_cached_tokens or 0,
        "draft_tokens": gen.compressed.draft_original_tokens if gen.compressed else 0,
        "seconds": {"draft": draft_s, "target": target_s, "total": total, "warm": warm_s},
    }


def record_chunks(engine, context: str, instruction: str, template, chunk_tokens=None, warm=False) -> tuple:
    """The context as chunks of about ``chunk_tokens`` draft tokens (else as it is) and, with ``warm``, the seconds
    of reading them into the chunk cache, as a prompt with this instruction will."""
    if not chunk_tokens:
        return context, 0.0
    chunks = chunked(context, engine.draft.tokenizer, chunk_tokens)
    t0 = time.perf_counter()
    if warm:
        engine.warm_chunks(chunks, instruction=instruction or None, template=template or "chat")
    return chunks, time.perf_counter() - t0


def _full_tokens(engine, rec: Record, instruction, question, template) -> int:
    """Target tokens of the uncompressed prompt (LLMLingua's input), laid out as the engine does."""
    _, context, _ = split_input(rec.input)
    request = PromptInput(
        context, instruction=instruction or None, question=question or None, answer_prefix=rec.answer_prefix or None
    )
    return len(engine.target_ids(request, template))


def draft_overhead(engine: DraftEngine, records: list[Record], ratio: float = 0.25, repeats: int = 2) -> dict:
    """SpecPC's draft pass (attention capture + lookahead) against a plain draft forward of the same prompt, both
    through an engine on ``engine``'s draft without caches (``cost.reader``: each run reads cold); each record
    takes the faster of ``repeats`` runs of each."""
    from .cost.runs import reader

    cold = reader(engine.draft, engine.specpc)
    full = cold.plan(method="full", max_new_tokens=1)
    plain, spec = [], []
    for rec in records:
        instruction, context, question = split_input(rec.input)
        request = PromptInput(context, instruction=instruction or None, question=question or None,
                              answer_prefix=rec.answer_prefix or None)  # fmt: skip
        p, s = [], []
        for _ in range(repeats):
            prepared = cold.prepare(request, full)
            t0 = time.perf_counter()
            prepared.prefill(cold.target.model, prepared.ids)
            p.append(time.perf_counter() - t0)
            s.append(cold.compress(request, ratio=ratio).seconds["draft"])
        plain.append(min(p))
        spec.append(min(s))
    n = len(records)
    return {
        "n": n,
        "plain_forward_s": sum(plain) / n,
        "specpc_draft_s": sum(spec) / n,
        "overhead_pct": 100 * (sum(spec) / sum(plain) - 1),
        "lookahead_tokens": engine.specpc.lookahead_tokens,
    }
