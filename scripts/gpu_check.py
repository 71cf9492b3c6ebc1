"""One-command GPU check: every method under each attention kernel, device_map="auto", the cost bench, a real pair.

Run it the day a GPU is lent (about 10 minutes on one card) and commit its report:

    python scripts/gpu_check.py --out docs/bench/gpu_check.md
    python scripts/gpu_check.py --pair /models/Llama-3.2-1B-Instruct:/models/Llama-3.1-8B-Instruct --out ...

1. Methods: the built-in SmolLM2 as draft and target, each method (and full / speckv with sparse prefill) under
   sdpa and flash_attention_2 (skipped, and said so, when flash-attn is not installed), in bf16, on a needle prompt.
2. ``device_map="auto"``: the target loaded through accelerate's placement, one specpc and one speckv answer.
3. Cost: ``draft-rag cost`` for one target shape at 8k-32k tokens, dense and sparse prefill, every layer.
4. With ``--pair DRAFT:TARGET`` (local weights): the bench on a few RULER tasks.
5. Numbers: on CPU fp32 and, where CUDA exists, CUDA fp32 and bf16, under eager, sdpa and flash_attention_2: the
   draft scores of the capture hook against the model's own eager attention (max abs / rel error) and against CPU
   fp32 eager; SpecKV's kept KV positions per layer and head against the CPU fp32 eager run (overlap) and against
   the same device's eager run; sparse-prefill logits with every key selected against the dense prefill. A case
   that cannot run here is a row saying why.

A step that fails is a row saying so; the others still run. ``--device cpu --dtype float32`` runs the same logic on
CPU (the tests do, with tiny models). Writes the markdown report to ``--out`` and the same data as JSON beside it.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path

NEEDLE = "The special magic number for ocean is 4728163. "
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "What is the special magic number for ocean mentioned in the provided text?"
ANSWER = "4728163"
METHOD_BUDGETS = {"full": {}, "specpc": {"ratio": 0.25}, "speckv": {"budget": 256}, "speckv-pc": {"budget": 256},
                  "snapkv": {"budget": 256}, "streamingllm": {"budget": 256}, "random": {"budget": 256}}  # fmt: skip
SPARSE_METHODS = ("full", "speckv")


def needle_text(n_tokens: int) -> str:
    """A haystack of about ``n_tokens`` tokens (24 per filler line) with the needle at 60%."""
    lines = [FILLER] * max(1, n_tokens // 24)
    lines.insert(int(len(lines) * 0.6), NEEDLE)
    return "".join(lines)


def kernels(requested: list[str]) -> list[tuple[str, str]]:
    """(attention implementation, "" or why it is skipped)."""
    out = []
    for name in requested:
        missing = name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None
        out.append((name, "flash-attn is not installed" if missing else ""))
    return out


def _row(step: str, case: str, fn) -> dict:
    """Run one case; a failure is recorded, never raised."""
    t0 = time.perf_counter()
    try:
        result = fn()
        return {"step": step, "case": case, "ok": True, "seconds": time.perf_counter() - t0, **result}
    except Exception as exc:  # noqa: BLE001 - the report says what broke and the check goes on
        traceback.print_exc()
        return {"step": step, "case": case, "ok": False, "seconds": time.perf_counter() - t0, "note": repr(exc)[:200]}


def _answer(engine, method: str, text: str, **kw) -> dict:
    g = engine.generate(text, question=QUESTION, method=method, max_new_tokens=12, **METHOD_BUDGETS[method], **kw)
    s = g.stats
    return {
        "note": f"needle {'found' if ANSWER in g.text else 'missed'}; {s.prompt_tokens} prompt tokens, "
        f"KV {s.kv_bytes / 2**20:.1f} MiB, sparse layers {s.sparse_layers}"
    }


def check_methods(args) -> list[dict]:
    rows, text = [], needle_text(args.needle_tokens)
    for attn, skip in kernels(args.attn):
        if skip:
            rows.append({"step": "methods", "case": attn, "ok": None, "seconds": 0.0, "note": f"skipped: {skip}"})
        else:
            rows += _methods_under(args, attn, text)
    return rows


def _methods_under(args, attn: str, text: str) -> list[dict]:
    """Load the pair with one attention implementation, then answer ``text`` with every method."""
    from draft_rag import DraftEngine

    held = {}

    def load():
        held["engine"] = DraftEngine(args.target or args.draft, args.draft, device=args.device, dtype=args.dtype,
                                     attn_implementation=attn)  # fmt: skip
        return {"note": f"{held['engine'].target.name} on {args.device}"}

    loaded = _row("methods", f"{attn} load", load)
    if not loaded["ok"]:
        return [loaded]
    cases = [(m, {}) for m in METHOD_BUDGETS] + [(m, {"sparse_prefill": args.sparse_config}) for m in SPARSE_METHODS]
    return [
        _row(
            "methods",
            f"{attn} {m}" + (" +sparse" if kw else ""),
            functools.partial(_answer, held["engine"], m, text, **kw),
        )
        for m, kw in cases
    ]


def check_device_map(args) -> list[dict]:
    from draft_rag import DraftEngine

    def run():
        engine = DraftEngine(args.target or args.draft, args.draft, dtype=args.dtype,
                             target_kwargs={"device_map": "auto"}, draft_kwargs={"device": args.device})  # fmt: skip
        text = needle_text(args.needle_tokens)
        notes = [f"{m}: {_answer(engine, m, text)['note']}" for m in ("specpc", "speckv")]
        return {"note": "; ".join(notes)}

    return [_row("device_map", "auto", run)]


def check_cost(args) -> list[dict]:
    from draft_rag.bench import cost

    rows: list[dict] = []

    def run():
        got = cost.run_cost(
            args.draft, [args.shape], args.lengths, repeats=1, new_tokens=8, slice_layers=None, device=args.device,
            dtype=args.dtype, methods=["speckv", "speckv-pc"], budgets=[cost.BudgetLevel(0.25, 256)],
            sparse=args.sparse_config,
        )  # fmt: skip
        rows.extend(got)
        return {"note": f"{len(got)} cells"}

    return [_row("cost", f"{args.shape} {'/'.join(map(str, args.lengths))}", run)], rows


def check_pair(args) -> tuple[list[dict], dict]:
    from draft_rag.bench.grid import parse_pair, run_grid

    data: dict = {}

    def run():
        pair = parse_pair(args.pair)
        methods = ["full", "specpc", "speckv", "speckv-pc"]
        out = Path(args.out).with_suffix("")
        got = run_grid([pair], args.tasks, [args.pair_length], args.n, methods, ratios=[0.25], kv_budgets=[256],
                       out_dir=out, progress=False)  # fmt: skip
        data.update(got)
        return {"note": f"{len(got['results'])} cells"}

    return [_row("pair", args.pair, run)], data


def numeric_cases() -> list[tuple[str, str, str, str]]:
    """(device, dtype, kernel, why it cannot run here or "") for the numeric comparisons."""
    import torch

    out = []
    for device, dtype in (("cpu", "float32"), ("cuda", "float32"), ("cuda", "bfloat16")):
        for kernel in ("eager", "sdpa", "flash_attention_2"):
            why = ""
            if device == "cuda" and not torch.cuda.is_available():
                why = "no CUDA device (torch.cuda.is_available() is False)"
            elif kernel == "flash_attention_2" and device != "cuda":
                why = "flash-attention-2 runs only on CUDA"
            elif kernel == "flash_attention_2" and dtype == "float32":
                why = "flash-attention-2 runs only in fp16/bf16"
            elif kernel == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
                why = "flash-attn is not installed"
            out.append((device, dtype, kernel, why))
    return out


def _probe(model, ids, window: int, budget: int) -> dict:
    """One model's numbers: captured window probabilities per layer, SpecKV's kept positions, dense logits."""
    import torch

    from draft_rag.attention import observe, window_probs
    from draft_rag.config import SpecKVConfig
    from draft_rag.speckv import attention_scores, compressed_prefill

    captured = {}

    def grab(module, query, key, mask, kwargs):
        captured[module.layer_idx] = window_probs(query, key, mask, kwargs, window).flatten(1, 2).float().cpu()

    with torch.no_grad():
        with observe(model, grab):
            logits = model(ids).logits[0].float().cpu()
        score = functools.partial(attention_scores, cfg=SpecKVConfig(window_size=8))
        _, kv = compressed_prefill(model, ids[0].tolist(), [], budget, score, window=8)
    kept = [None if k is None else k[0].cpu() for k in kv.kept]
    return {"probs": [captured[i] for i in sorted(captured)], "kept": kept, "logits": logits}


def _eager_probs(model, ids, window: int) -> list:
    """The model's own eager attention: the last ``window`` rows of every layer's probabilities."""
    import torch

    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        return [a[0, :, -window:].float().cpu() for a in eager(ids, output_attentions=True).attentions]


def _errors(got: list, want: list) -> tuple[float, float]:
    """Max abs error, and max rel error over entries of ``want`` at least 1e-3, across layers."""
    abs_err = max((g[0] - w).abs().max().item() for g, w in zip(got, want))
    rel = max(((g[0] - w).abs() / w.clamp_min(1e-3))[w >= 1e-3].max().item() for g, w in zip(got, want))
    return abs_err, rel


def _overlap(a: list, b: list) -> float:
    """Mean share of kept positions two runs share, per layer and KV head (layers kept whole count as 1)."""
    shares = []
    for x, y in zip(a, b):
        if x is None or y is None:
            shares.append(1.0 if x is None and y is None else 0.0)
            continue
        for hx, hy in zip(x.tolist(), y.tolist()):
            shares.append(len(set(hx) & set(hy)) / max(1, len(hx)))
    return sum(shares) / len(shares)


def _sparse_error(model, ids) -> tuple[float, int]:
    """Max abs logit error of the sparse prefill with every key selected against the dense prefill; sparse layers."""
    import torch

    from draft_rag import SparsePrefillConfig
    from draft_rag.sparse_prefill import sparse_prefill

    n = ids.shape[1]
    every = SparsePrefillConfig(prefill_vertical_size=n, prefill_window_size=16, query_block=64, min_tokens=0)
    with torch.no_grad():
        dense = model(ids).logits.float()
        with sparse_prefill(model, every, n, 8) as stats:
            sparse = model(ids).logits.float()
    return (sparse - dense).abs().max().item(), stats.layers


def check_numbers(args) -> list[dict]:
    """Step 5: numbers per (device, dtype, kernel); CPU fp32 eager is the reference."""
    import torch

    from draft_rag import load_model

    base = load_model(args.draft, device="cpu", dtype=torch.float32, attn_implementation="eager").model
    text_ids = load_model(args.draft, device="cpu").tokenizer(needle_text(args.numbers_tokens))["input_ids"]
    ids = torch.tensor([text_ids[: args.numbers_tokens]])
    budget = max(16, ids.shape[1] // 4)
    ref = {**_probe(base, ids, args.window, budget), "eager": _eager_probs(base, ids, args.window)}
    rows, eager_kept = [], {}
    for device, dtype, kernel, why in numeric_cases():
        case = f"{device} {dtype} {kernel}"
        if why:
            rows.append({"step": "numbers", "case": case, "ok": None, "seconds": 0.0, "note": f"not run: {why}"})
            continue
        rows.append(_row("numbers", case, functools.partial(_numbers_case, base, ids, ref, eager_kept, device,
                                                           dtype, kernel, args.window, budget)))  # fmt: skip
    return rows


def _numbers_case(base, ids, ref, eager_kept, device, dtype, kernel, window, budget) -> dict:
    import torch

    model = copy.deepcopy(base).to(device=device, dtype=getattr(torch, dtype))
    model.set_attn_implementation(kernel)
    on = ids.to(device)
    got = _probe(model, on, window, budget)
    own = _eager_probs(model, on, window)
    if kernel == "eager":
        eager_kept[(device, dtype)] = got["kept"]
    abs_own, rel_own = _errors(got["probs"], own)
    abs_ref, _ = _errors(got["probs"], ref["eager"])
    sparse_err, sparse_layers = _sparse_error(model, on)
    numbers = {
        "capture_vs_own_eager_max_abs": abs_own,
        "capture_vs_own_eager_max_rel": rel_own,
        "capture_vs_cpu_fp32_eager_max_abs": abs_ref,
        "kept_overlap_vs_cpu_fp32_eager": _overlap(got["kept"], ref["kept"]),
        "kept_overlap_vs_same_device_eager": _overlap(got["kept"], eager_kept.get((device, dtype), got["kept"])),
        "logits_vs_cpu_fp32_max_abs": (got["logits"] - ref["logits"]).abs().max().item(),
        "sparse_every_key_vs_dense_max_abs": sparse_err,
        "sparse_layers": sparse_layers,
    }
    note = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers.items())
    return {"note": note, "numbers": numbers}


def sparse_blocks(args) -> str:
    """Which kernel the sparse prefill's query blocks run on for this device and dtype."""
    import torch

    from draft_rag.sparse_prefill import varlen_kernel

    probe = torch.zeros(1, device=args.device, dtype=getattr(torch, args.dtype))
    return "flash-attn varlen, one call per layer" if varlen_kernel(probe) else "torch SDPA, one call per query block"


def report(args, rows: list[dict], cost_rows: list[dict], grid: dict, seconds: float) -> str:
    import torch

    from draft_rag.bench import cost
    from draft_rag.bench.report import summary_table

    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") and torch.cuda.is_available() else "CPU"
    parts = [
        f"# GPU check: {device}, {args.dtype}, torch {torch.__version__}, {seconds:.0f} s",
        "",
        f"Sparse prefill blocks: {sparse_blocks(args)}.",
        "",
        "| step | case | result | seconds | note |",
        "|---|---|---|---|---|",
    ]
    mark = {True: "ok", False: "FAILED", None: "skipped"}
    for r in rows:
        parts.append(f"| {r['step']} | {r['case']} | {mark[r['ok']]} | {r['seconds']:.1f} | {r.get('note', '')} |")
    if cost_rows:
        parts += ["", cost.table(cost_rows), "", cost.sparse_table(cost_rows)]
    if grid.get("results"):
        parts += ["", summary_table(grid["results"])]
    return "\n".join(parts) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--attn", nargs="+", default=["sdpa", "flash_attention_2"])
    p.add_argument("--draft", default="smollm2-135m-instruct", help="draft (and, without --target, the target)")
    p.add_argument("--target", help="target for the methods and device_map steps (default: the draft)")
    p.add_argument("--needle-tokens", type=int, default=2048)
    p.add_argument("--shape", default="smollm2-1.7b", help="draft-rag cost's target shape")
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768])
    p.add_argument("--pair", help="DRAFT:TARGET local weights for the RULER step (skipped without)")
    p.add_argument("--tasks", nargs="+", default=["niah_single_2", "niah_multikey_1", "vt", "qa_1"])
    p.add_argument("--pair-length", type=int, default=8192)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--steps", nargs="+", default=["methods", "device_map", "cost", "pair", "numbers"])
    p.add_argument("--numbers-tokens", type=int, default=512, help="prompt tokens of the numeric comparisons")
    p.add_argument("--window", type=int, default=32, help="window queries the numeric comparisons capture")
    p.add_argument("--sparse-min-tokens", type=int, default=None, help="SparsePrefillConfig.min_tokens (tests)")
    p.add_argument("--out", default="gpu_check.md")
    return p.parse_args(argv)


def main(argv=None) -> str:
    from draft_rag import SparsePrefillConfig

    args = parse_args(argv)
    args.sparse_config = SparsePrefillConfig(min_tokens=args.sparse_min_tokens)
    t0 = time.perf_counter()
    rows, cost_rows, grid = [], [], {}
    if "methods" in args.steps:
        rows += check_methods(args)
    if "device_map" in args.steps:
        rows += check_device_map(args)
    if "cost" in args.steps:
        cost_status, cost_rows = check_cost(args)
        rows += cost_status
    if "pair" in args.steps:
        if args.pair:
            pair_status, grid = check_pair(args)
            rows += pair_status
        else:
            rows.append({"step": "pair", "case": "-", "ok": None, "seconds": 0.0, "note": "skipped: no --pair"})
    if "numbers" in args.steps:
        rows += check_numbers(args)
    text = report(args, rows, cost_rows, grid, time.perf_counter() - t0)
    Path(args.out).write_text(text)
    command = ["python", "scripts/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]
    data = {"command": " ".join(command), "rows": rows, "cost": cost_rows}
    Path(args.out).with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    print(text)
    return text


if __name__ == "__main__":
    main()
