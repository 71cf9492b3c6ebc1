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

from ... import speckv
from ...attention import use_kernel
from ...budgets import speckv_pc_stage
from ...config import Budget, SparsePrefillConfig, SpecKVConfig, SpecPCConfig
from ...generation import plain_prefill
from ...methods import Method
from ...methods import get as get_method
from ...models import LoadedModel, load_model
from ...pipeline import compressed_segments
from ...prompt import build_segments, tokenize, wrap
from ...sparse_prefill import SPARSE_METHODS
from ...specpc import compress
from ..data import split_input
from ..tasks import generate
from .shapes import DEFAULT_BUDGETS, METHODS, SHAPES, BudgetLevel, build_target, target_params
from .tables import dense_reference
from .timing import AttentionClock, LayerClock, PeakMemory, decode, scale, timed

logger = logging.getLogger(__name__)


def prompt(tokenizer, length: int, seed: int = 0):
    """A needle-in-a-haystack prompt of about ``length`` draft tokens: (segments, chunks)."""
    rec = generate("niah_single", tokenizer, length, 1, seed)[0]
    instruction, context, question = split_input(rec["input"])
    return build_segments(context, instruction=instruction or None, question=question or None)


def draft_stages(
    draft: LoadedModel,
    segments,
    chunks,
    budgets,
    new_tokens: int,
    specpc: SpecPCConfig | None = None,
    methods=METHODS,
) -> dict:
    """The draft-side stages of ``methods`` for one prompt: {stage: (result, seconds)}; stage names are
    method@budget ("plain": the prompt's draft tokens and, with specpc, a plain draft forward's seconds)."""
    model, tok, device = draft.model, draft.tokenizer, draft.model.device
    specpc = specpc or SpecPCConfig()
    ids = tokenize(tok, wrap(segments, tok, "chat")).ids
    eos = {tok.eos_token_id}
    out = {"plain": (len(ids), None)}  # timed for SpecPC's overhead table only; no autograd, as every stage
    for name in (m for m in METHODS if m in methods):
        m = get_method(name)
        if m.reference:
            continue
        if not m.shortens_prompt:  # SpecKV: one lookahead, whatever the budget
            out[name] = timed(lambda: speckv.draft_lookahead(model, ids, new_tokens, eos), device)
            continue
        if not m.evicts_kv:
            out["plain"] = (len(ids), timed(lambda: plain_prefill(model, ids), device)[1])
        for b in budgets:
            stage = _shortening(m, specpc, b, eos)
            out[_draft_key(name, b)] = timed(functools.partial(stage, model, tok, segments, chunks), device)
    return out


def _shortening(m: Method, specpc: SpecPCConfig, budget: BudgetLevel, eos: set[int]):
    """The draft stage of a method that shortens the prompt at ``budget``: ``stage(model, tok, segments, chunks)``."""
    if m.evicts_kv:  # SpecKV-PC, with the engine's settings for it
        return functools.partial(_speckv_pc, cfg=speckv_pc_stage(specpc, Budget(ratio=budget.ratio)), eos=eos)
    return functools.partial(compress, cfg=specpc.replace(ratio=budget.ratio))


def _speckv_pc(model, tok, segments, chunks, cfg: SpecPCConfig, eos: set[int]):
    """SpecKV-PC's draft side as the engine runs it: SpecPC, and when SpecPC drafted no lookahead (block mode),
    the lookahead drafted from the compressed prompt."""
    shortened = compress(model, tok, segments, chunks, cfg)
    if not shortened.lookahead_ids and cfg.lookahead_tokens:
        ids = tokenize(tok, wrap(compressed_segments(shortened, segments), tok, "chat")).ids
        look = speckv.draft_lookahead(model, ids, cfg.lookahead_tokens, eos)
        shortened = dataclasses.replace(shortened, lookahead_ids=look)
    return shortened


def target_run(
    target: LoadedModel,
    method: str,
    budget: BudgetLevel | None,
    segments,
    stages: dict,
    new_tokens: int,
    sparse: SparsePrefillConfig | None = None,
) -> dict:
    """Target side of one cell: prefill seconds (and, dense, its attention kernel's), decode s/token, peak memory
    and KV bytes; ``sparse``: the prefill is vertical-slash sparse."""
    model, tok, device = target.model, target.tokenizer, target.model.device
    m, key = get_method(method), _draft_key(method, budget)
    if m.shortens_prompt:
        segments = compressed_segments(stages[key][0], segments)
    ids = tokenize(tok, wrap(segments, tok, "chat")).ids
    if not m.evicts_kv:
        prefill = functools.partial(speckv.plain_prefill_stats, sparse=sparse)
    else:
        drafted = stages[key][0]
        cfg = SpecKVConfig(budget=budget.kv)
        prefill = functools.partial(
            speckv.compressed_prefill,
            lookahead_ids=drafted.lookahead_ids if m.shortens_prompt else drafted,
            budget=budget.kv,
            scorer=m.make_scorer(cfg),
            window=cfg.window_size,
            horizon=new_tokens,
            sparse=sparse,
        )
    attention = AttentionClock(device)
    with PeakMemory(device) as mem:
        with LayerClock(model) as in_prefill, use_kernel(model, attention):  # a sparse prefill sets its own kernel
            (state, kv), seconds = timed(lambda: prefill(model, ids), device)
        with LayerClock(model) as in_decode:
            step = decode(model, state, new_tokens)
    return {
        "layers": len(model.model.layers),
        "target_tokens": len(ids),
        "prefill_s": seconds,
        "prefill_layers_s": in_prefill.seconds,
        "attention_s": None if kv.sparse_layers else attention.seconds,
        "sparse_layers": kv.sparse_layers,
        "decode_s_per_token": step,
        "decode_layers_s_per_token": in_decode.seconds / max(1, new_tokens - 1),
        "peak_bytes": mem.peak,
        "kv_bytes": kv.kv_bytes,
    }


def cells_for(budgets, methods=METHODS, sparse: bool = False) -> list[tuple[str, BudgetLevel | None, bool]]:
    """(method, budget, sparse prefill) cells: full (always, the reference), then each method at each budget;
    with ``sparse`` each of ``SPARSE_METHODS`` once more with a sparse prefill."""
    dense = [("full", None)] + [(m, b) for m in METHODS[1:] if m in methods for b in budgets]
    return [(m, b, False) for m, b in dense] + [(m, b, True) for m, b in dense if sparse and m in SPARSE_METHODS]


def _scoring_seconds(stages: dict, key: str | None) -> float:
    """The draft forward alone: SpecPC's scoring pass (without selection), SpecKV's lookahead drafting."""
    if key is None:
        return 0.0
    result, seconds = stages[key]
    return result.seconds["draft"] if hasattr(result, "seconds") else seconds


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
    segments, chunks = prompt(draft.tokenizer, min(512, min(lengths) // 2))  # warm-up on a short prompt, not recorded
    stages = draft_stages(draft, segments, chunks, budgets, new_tokens, specpc, methods)
    cells = cells_for(budgets, methods, sparse is not None)
    for target in targets.values():
        for method, budget, sparsely in cells:
            target_run(target, method, budget, segments, stages, new_tokens, sparse if sparsely else None)
    raw: dict = {}
    for length in lengths:
        segments, chunks = prompt(draft.tokenizer, length)
        for rep in range(repeats):
            t0 = time.perf_counter()
            stages = draft_stages(draft, segments, chunks, budgets, new_tokens, specpc, methods)
            logger.info(
                "cost: %d tokens, draft stages %s",
                length,
                {k: round(v[1], 1) for k, v in stages.items() if v[1] is not None},
            )
            for shape, target in targets.items():
                for method, budget, sparsely in cells:
                    run = target_run(target, method, budget, segments, stages, new_tokens, sparse if sparsely else None)
                    sample = _sample(stages, _draft_key(method, budget), run)
                    raw.setdefault((shape, length, method, budget, sparsely), []).append(sample)
            logger.info("cost: %d tokens, repetition %d done in %.0f s", length, rep + 1, time.perf_counter() - t0)
            rows = summarize(raw, draft, new_tokens)
            if out is not None:
                save(rows, out, meta(draft_ref, repeats, new_tokens, slice_layers, device, sparse))
    return summarize(raw, draft, new_tokens)


def _sample(stages: dict, key: str | None, run: dict) -> dict:
    """One repetition of one cell: its draft stage's figures beside the target's (``target_run``)."""
    return {
        "draft_s": stages[key][1] if key else 0.0,
        "scoring_s": _scoring_seconds(stages, key),
        "plain_draft_s": stages["plain"][1],
        "draft_tokens": stages["plain"][0],
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


def meta(draft_ref, repeats, new_tokens, slice_layers, device, sparse: SparsePrefillConfig | None = None) -> dict:
    """cost.json's ``meta``: how the rows were measured."""
    return {
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
