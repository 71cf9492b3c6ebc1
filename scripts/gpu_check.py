"""One-command GPU check: every method under each attention kernel, device_map="auto", the cost bench, a real pair.

Run it the day a GPU is lent (about 10 minutes on one card) and commit its report:

    python scripts/gpu_check.py --out docs/bench/gpu_check.md
    python scripts/gpu_check.py --pair /models/Llama-3.2-1B-Instruct:/models/Llama-3.1-8B-Instruct --out ...

1. Methods: the built-in SmolLM2 as draft and target, each method (and full / speckv with sparse prefill) under
   sdpa and flash_attention_2 (skipped, and said so, when flash-attn is not installed), in bf16, on a needle prompt.
2. ``device_map="auto"``: the target loaded through accelerate's placement, one specpc and one speckv answer.
3. Cost: ``draft-rag cost`` for one target shape at 8k-32k tokens, dense and sparse prefill, every layer.
4. With ``--pair DRAFT:TARGET`` (local weights): the bench on a few RULER tasks.

A step that fails is a row saying so; the others still run. ``--device cpu --dtype float32`` runs the same logic on
CPU (the tests do, with tiny models).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
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
    p.add_argument("--steps", nargs="+", default=["methods", "device_map", "cost", "pair"])
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
    text = report(args, rows, cost_rows, grid, time.perf_counter() - t0)
    Path(args.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
