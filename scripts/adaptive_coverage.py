"""How much context ``budget="adaptive"`` keeps per coverage, and how often the answer survives (draft only).

For RULER records at one length (generated as ``draft-rag bench`` does), SpecPC compresses each prompt at several
coverages and at the fixed ratios; per setting: mean kept context tokens and the share of records whose every
gold answer string is still in the kept text (evidence kept, independent of any target). The draft's pass over a
record is read once: later settings reuse it through the context cache. Prints a markdown table, writes JSON.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/adaptive_coverage.py --length 1024 --n 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from draft_rag.bench.data import parse_record, split_input
from draft_rag.bench.tasks import RULER_13, generate


def settings(coverages, ratios) -> list[tuple[str, dict]]:
    return [(f"adaptive {c}", {"coverage": c}) for c in coverages] + [(f"ratio {r}", {"ratio": r}) for r in ratios]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--tasks", nargs="+", default=list(RULER_13))
    p.add_argument("--coverages", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9, 0.95, 0.98])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--draft", default="smollm2-135m-instruct")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="adaptive_coverage.json")
    args = p.parse_args()

    from draft_rag import DraftEngine

    engine = DraftEngine(draft=args.draft, threads=args.threads)
    base = engine.specpc
    rows = []
    t0 = time.perf_counter()
    for task in args.tasks:
        raw = generate(task, engine.draft.tokenizer, args.length, args.n)
        for i, rec in enumerate(parse_record(r, f"{task}[{i}]") for i, r in enumerate(raw)):
            instruction, context, question = split_input(rec.input)
            parts = dict(
                instruction=instruction or None, question=question or None, answer_prefix=rec.answer_prefix or None
            )
            for name, knob in settings(args.coverages, args.ratios):
                engine.specpc = base.replace(coverage=knob.get("coverage"))  # the same draft pass, reused
                budget = "adaptive" if "coverage" in knob else None
                kept = engine.compress(context, budget=budget, ratio=knob.get("ratio"), **parts)
                rows.append({
                    "task": task, "record": i, "setting": name, "kept_tokens": kept.draft_kept_tokens,
                    "input_tokens": kept.draft_original_tokens,
                    "evidence": all(o.lower() in kept.text.lower() for o in rec.outputs),
                })  # fmt: skip
        print(f"{task}: done, {time.perf_counter() - t0:.0f} s", flush=True)
    Path(args.json).write_text(json.dumps({"length": args.length, "n": args.n, "rows": rows}, indent=1))
    print(f"\n{len(args.tasks)} tasks x {args.n} records at {args.length} tokens, draft {args.draft}\n")
    head = ["setting", "mean kept tokens", "kept share of the prompt", "evidence kept", "niah tasks", "other tasks"]
    print("| " + " | ".join(head) + " |")
    print("|---|---|---|---|---|---|")
    for name, _ in settings(args.coverages, args.ratios):
        rs = [r for r in rows if r["setting"] == name]
        share = statistics.mean(r["kept_tokens"] / r["input_tokens"] for r in rs)
        rate = lambda xs: f"{100 * statistics.mean(r['evidence'] for r in xs):.0f}%" if xs else ""  # noqa: E731
        niah = [r for r in rs if r["task"].startswith("niah")]
        other = [r for r in rs if not r["task"].startswith("niah")]
        print(f"| {name} | {statistics.mean(r['kept_tokens'] for r in rs):.0f} | {100 * share:.0f}% | {rate(rs)} | "
              f"{rate(niah)} | {rate(other)} |")  # fmt: skip


if __name__ == "__main__":
    main()
