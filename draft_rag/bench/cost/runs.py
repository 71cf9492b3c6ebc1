"""The cost bench's runs: draft stages once per prompt, then every target x method cell, medians per cell."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from ...attention import use_kernel
from ...config import SparsePrefillConfig, SpecPCConfig
from ...engine import DraftEngine
from ...inputs import PromptInput
from ...methods import get as get_method
from ...models import LoadedModel, context_window, load_model
from ...options import GenerationOptions
from ...sparse_prefill import SPARSE_METHODS
from ..data import split_input
from ..tasks import generate
from .shapes import DEFAULT_BUDGETS, METHODS, SHAPES, BudgetLevel, build_target, target_params
from .tables import dense_reference
from .timing import AttentionClock, LayerClock, PeakMemory, decode, scale, timed

logger = logging.getLogger(__name__)


def prompt(tokenizer, length: int, seed: int = 0) -> PromptInput:
    """A needle-in-a-haystack prompt of about ``length`` draft tokens, its instruction and question protected."""
    rec = generate("niah_single", tokenizer, length, 1, seed)[0]
    instruction, context, question = split_input(rec["input"])
    return PromptInput(context, instruction=instruction or None, question=question or None)


def reader(draft: LoadedModel, specpc: SpecPCConfig | None = None) -> DraftEngine:
    """The engine that runs and times draft stages: the draft as its own target (its plain forward is method full),
    without caches (every repetition reads cold). Its windows are lifted: a draft reading past its window stands in
    for one of the same size with a longer window (cost does not depend on the weights); cost rows say so
    (``past_draft_window``)."""
    engine = DraftEngine(draft, draft, specpc=specpc, context_cache_mb=0)
    engine.draft_window = engine.target_window = None
    return engine


def engines(draft: LoadedModel, targets: dict, specpc: SpecPCConfig | None = None) -> tuple[DraftEngine, dict]:
    """The engines the cells run through: a ``reader`` that runs each draft stage once per prompt, and one engine
    per target (no caches) that reuses them."""
    by_target = {k: DraftEngine(t, draft, specpc=specpc, context_cache_mb=0) for k, t in targets.items()}
    return reader(draft, specpc), by_target


def options(method: str, budget: BudgetLevel | None, new_tokens: int, sparse=None) -> GenerationOptions:
    """A cell's generation options: ``method`` at its budget level (a prompt ratio, KV entries, or both for a
    method that does both), ``new_tokens`` decoded, the prefill dense unless ``sparse``."""
    m = get_method(method)
    ratio = budget.ratio if budget and m.shortens_prompt else None
    kv = budget.kv if budget and m.evicts_kv else None
    both = dict(budget=kv, pc_ratio=ratio) if m.evicts_kv else dict(ratio=ratio)
    return GenerationOptions(method, **both, max_new_tokens=new_tokens, sparse_prefill=sparse or False)


def draft_stages(reader: DraftEngine, request: PromptInput, budgets, new_tokens: int, methods=METHODS) -> dict:
    """The draft stage of every cell for one prompt, each run once through ``reader.prepare``: {stage: (Prepared,
    seconds)}, stage names as ``_draft_key``; "plain": (the prompt's draft tokens, a plain draft forward's seconds,
    timed when a method only shortens the prompt, for SpecPC's overhead table)."""
    device = reader.draft.model.device
    out = {}
    for method, budget, _ in cells_for(budgets, methods):
        key = _draft_key(method, budget)
        if key is not None and key not in out:
            plan = reader.plan(options(method, budget, new_tokens))
            out[key] = timed(lambda: reader.prepare(request, plan), device)  # noqa: B023 (called at once)
    plain = reader.prepare(request, reader.plan(options("full", None, new_tokens)))
    overhead = any(get_method(m).shortens_prompt and not get_method(m).evicts_kv for m in methods)
    seconds = timed(lambda: plain.prefill(reader.target.model, plain.ids), device)[1] if overhead else None
    out["plain"] = (len(plain.ids), seconds)
    return out


def target_run(engine: DraftEngine, request: PromptInput, method: str, budget: BudgetLevel | None, stages: dict,
               new_tokens: int, sparse: SparsePrefillConfig | None = None) -> dict:  # fmt: skip
    """Target side of one cell through ``engine.prepare``, reusing the cell's draft stage: prefill seconds (and,
    dense, its attention kernel's), decode s/token, peak memory and KV bytes; ``sparse``: the prefill is
    vertical-slash sparse."""
    model, device = engine.target.model, engine.target.model.device
    key = _draft_key(method, budget)
    drafted = stages[key][0].drafted if key else None
    prepared = engine.prepare(request, engine.plan(options(method, budget, new_tokens, sparse)), drafted=drafted)
    attention = AttentionClock(device)
    with PeakMemory(device) as mem:
        with LayerClock(model) as in_prefill, use_kernel(model, attention):  # a sparse prefill sets its own kernel
            state, seconds = timed(lambda: prepared.prefill(model, prepared.ids), device)
        with LayerClock(model) as in_decode:
            step = decode(model, state, new_tokens)
    stats = prepared.stats
    return {
        "layers": len(model.model.layers),
        "target_tokens": len(prepared.ids),
        "prefill_s": seconds,
        "prefill_layers_s": in_prefill.seconds,
        "attention_s": None if stats.sparse_layers else attention.seconds,
        "sparse_layers": stats.sparse_layers,
        "decode_s_per_token": step,
        "decode_layers_s_per_token": in_decode.seconds / max(1, new_tokens - 1),
        "peak_bytes": mem.peak,
        "kv_bytes": stats.kv_bytes,
    }


def cells_for(budgets, methods=METHODS, sparse: bool = False) -> list[tuple[str, BudgetLevel | None, bool]]:
    """(method, budget, sparse prefill) cells: full (always, the reference), then each method at each budget;
    with ``sparse`` each of ``SPARSE_METHODS`` once more with a sparse prefill."""
    dense = [("full", None)] + [(m, b) for m in METHODS[1:] if m in methods for b in budgets]
    return [(m, b, False) for m, b in dense] + [(m, b, True) for m, b in dense if sparse and m in SPARSE_METHODS]


def _scoring_seconds(stages: dict, key: str | None) -> float:
    """The draft's forwards alone (its stats' ``draft`` seconds): SpecPC's scoring pass without selection, and any
    lookahead drafted."""
    return stages[key][0].stats.seconds.get("draft", 0.0) if key else 0.0


def _past_window(stages: dict, key: str | None, window: int | None) -> bool:
    """Whether the cell's draft read more tokens in one pass than its window: a lookahead drafted over the whole
    (not shortened) prompt past it; SpecPC reads in blocks."""
    if key is None or window is None:
        return False
    prepared = stages[key][0]
    whole = prepared.compressed is None and prepared.drafted.lookahead
    return bool(whole) and prepared.stats.original_tokens + len(prepared.drafted.lookahead) > window


def _draft_key(method: str, budget: BudgetLevel | None) -> str | None:
    """The draft stage a cell reads: none for the reference, one lookahead for SpecKV, else method@ratio."""
    m = get_method(method)
    if m.reference:
        return None
    return method if not m.shortens_prompt else f"{method}@{budget.ratio}"


def run_cost(
    draft_ref: str,
    shapes: list[str],
    lengths: list[int],
    *,
    budgets=DEFAULT_BUDGETS,
    repeats: int = 2,
    new_tokens: int = 8,
    slice_layers: int | None = 1,
    full_shapes=(),
    device=None,
    dtype=None,
    specpc: SpecPCConfig | None = None,
    out: Path | None = None,
    methods=METHODS,
    sparse: SparsePrefillConfig | None = None,
) -> list[dict]:
    """Measure every (shape, length, method, budget, sparse) cell ``repeats`` times, interleaved; return median
    rows. ``methods``: which to run besides full; ``sparse``: also their sparse-prefill cells (``cells_for``).

    Shapes in ``full_shapes`` (or all when ``slice_layers`` is None) run with all their layers; the others run
    their first ``slice_layers`` layers and are scaled. Rows are written to ``out``/cost.json after every repetition.
    """
    draft = load_model(draft_ref, device=device, dtype=dtype)
    targets = {
        shape: build_target(
            shape, draft, None if slice_layers is None or shape in full_shapes else slice_layers, device, dtype
        )
        for shape in shapes
    }
    reader, by_shape = engines(draft, targets, specpc)
    cells = cells_for(budgets, methods, sparse is not None)
    run = functools.partial(_repetition, reader, by_shape, cells, budgets, new_tokens, methods, sparse)
    run(prompt(draft.tokenizer, min(512, min(lengths) // 2)))  # warm-up on a short prompt, not recorded
    raw: dict = {}
    for length in lengths:
        request = prompt(draft.tokenizer, length)
        for rep in range(repeats):
            t0 = time.perf_counter()
            for cell, sample in run(request).items():
                raw.setdefault((cell[0], length, *cell[1:]), []).append(sample)
            logger.info("cost: %d tokens, repetition %d done in %.0f s", length, rep + 1, time.perf_counter() - t0)
            if out is not None:
                save(summarize(raw, draft, new_tokens), out, meta(draft_ref, repeats, new_tokens, slice_layers, device,
                                                                  sparse, context_window(draft.model)))  # fmt: skip
    return summarize(raw, draft, new_tokens)


def _repetition(reader, by_shape: dict, cells, budgets, new_tokens, methods, sparse, request) -> dict:
    """One repetition of every cell on ``request``: the draft stages once, then each target's cells;
    {(shape, method, budget, sparse): sample}."""
    stages = draft_stages(reader, request, budgets, new_tokens, methods)
    logger.info("cost: draft stages %s", {k: round(v[1], 1) for k, v in stages.items() if v[1] is not None})
    window = context_window(reader.draft.model)
    samples = {}
    for shape, engine in by_shape.items():
        for method, budget, sparsely in cells:
            run = target_run(engine, request, method, budget, stages, new_tokens, sparse if sparsely else None)
            samples[(shape, method, budget, sparsely)] = _sample(stages, _draft_key(method, budget), run, window)
    return samples


def _sample(stages: dict, key: str | None, run: dict, window: int | None) -> dict:
    """One repetition of one cell: its draft stage's figures beside the target's (``target_run``)."""
    return {
        "draft_s": stages[key][1] if key else 0.0,
        "scoring_s": _scoring_seconds(stages, key),
        "plain_draft_s": stages["plain"][1],
        "draft_tokens": stages["plain"][0],
        "past_draft_window": _past_window(stages, key, window),
        **run,
    }


def _row(samples: list[dict], shape: str, layers: int, new_tokens: int) -> dict:
    """Median over repetitions of each figure; target figures scaled to ``layers`` when measured on slices."""

    def per_rep(s):
        n = s["layers"]
        t = {
            "target_tokens": s["target_tokens"],
            "prefill_s": scale(s["prefill_s"], s["prefill_layers_s"], n, layers),
            "decode_s_per_token": scale(s["decode_s_per_token"], s["decode_layers_s_per_token"], n, layers),
            "kv_bytes": scale(s["kv_bytes"], s["kv_bytes"], n, layers),  # every layer holds the same entries
            "peak_bytes": scale(s["peak_bytes"], s["kv_bytes"], n, layers),
        }  # + each added layer's KV
        ttft = s["draft_s"] + t["prefill_s"]
        share = s["attention_s"] / s["prefill_layers_s"] if s["attention_s"] is not None else None
        return {
            **t,
            "attention_share": share,
            "draft_s": s["draft_s"],
            "scoring_s": s["scoring_s"],
            "plain_draft_s": s["plain_draft_s"],
            "ttft_s": ttft,
            "e2e_s": ttft + (new_tokens - 1) * t["decode_s_per_token"],
        }

    reps = [per_rep(s) for s in samples]
    return {k: None if reps[0][k] is None else statistics.median(r[k] for r in reps) for k in reps[0]}


def summarize(raw: dict, draft: LoadedModel, new_tokens: int) -> list[dict]:
    """One row per cell (medians), with the speed-up of end-to-end time and TTFT against full."""
    rows = []
    draft_params = sum(p.numel() for p in draft.model.parameters())
    for (shape, length, method, budget, sparsely), samples in raw.items():
        layers = SHAPES[shape]["num_hidden_layers"]
        row = {
            "shape": shape,
            "length": length,
            "method": method,
            "budget": _budget_value(method, budget),
            "sparse_prefill": sparsely,
            "sparse_layers": samples[0]["sparse_layers"],
            "scaled": samples[0]["layers"] != layers,
            "measured_layers": samples[0]["layers"],
            "repeats": len(samples),
            "new_tokens": new_tokens,
            "draft_tokens": samples[0]["draft_tokens"],
            "past_draft_window": samples[0].get("past_draft_window", False),
            "size_ratio": target_params(shape, draft) / draft_params,
            **_row(samples, shape, layers, new_tokens),
        }
        rows.append(row)
    full = {(r["shape"], r["length"]): r for r in rows if dense_reference(r)}
    for r in rows:
        f = full.get((r["shape"], r["length"]))
        r["speedup_e2e"] = f["e2e_s"] / r["e2e_s"] if f else None
        r["speedup_ttft"] = f["ttft_s"] / r["ttft_s"] if f else None
    return rows


def _budget_value(method: str, budget: BudgetLevel | None):
    """A row's ``budget``: the prompt ratio, the KV entries, or [ratio, entries] for a method with both."""
    m = get_method(method)
    if budget is None:
        return None
    if m.shortens_prompt and m.evicts_kv:
        return [budget.ratio, budget.kv]
    return budget.ratio if m.shortens_prompt else budget.kv


def meta(draft_ref, repeats, new_tokens, slice_layers, device, sparse: SparsePrefillConfig | None = None,
         draft_window: int | None = None) -> dict:  # fmt: skip
    """cost.json's ``meta``: how the rows were measured (``draft_window``: the draft's own, which cells marked
    ``past_draft_window`` read past)."""
    return {
        "draft_window": draft_window,
        "sparse_prefill": dataclasses.asdict(sparse) if sparse else None,
        "draft": getattr(draft_ref, "name", str(draft_ref)),
        "repeats": repeats,
        "new_tokens": new_tokens,
        "torch_threads": torch.get_num_threads(),
        "slice_layers": slice_layers,
        "device": str(device or "default"),
    }


def save(rows: list[dict], out: Path, info: dict) -> Path:
    """Write ``out``/cost.json: ``meta`` and the rows."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "cost.json"
    path.write_text(json.dumps({"meta": info, "rows": rows}, indent=1))
    return path
