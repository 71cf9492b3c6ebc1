"""Does SpecPC's output state only what its source states? Per granularity and ratio, on structured documents.

For each seed, one document of ``draft_rag.bench.structured`` (an orders table with ids and phone numbers,
Python signatures with defaults, a contacts list, prose full of numbers; ~4.7k draft tokens) and a question
whose answer is one line of it. SpecPC compresses it at every ratio and granularity (the draft reads the
document once; later settings reuse its KV through the context cache). Per setting: the statements of the
output that the source does not make (``draft_rag.faithfulness.unsupported``, by kind), whether the output is
its kept spans with every gap marked (``draft_rag.units.render``; token-level SpecPC marks none), and whether the
evidence line survived whole.
Prints a markdown table, writes JSON.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/faithfulness.py --seeds 8
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from draft_rag.bench.structured import structured_doc
from draft_rag.faithfulness import unsupported
from draft_rag.units import GRANULARITIES, render

KINDS = ("number", "identifier", "line", "split")


def measure(engine, doc, granularity: str, ratio: float) -> dict:
    """One compression of ``doc``: its counts of unsupported statements by kind, gap marks, evidence."""
    engine.specpc = engine.specpc.replace(granularity=granularity)
    cp = engine.compress(doc.text, question=doc.question, ratio=ratio)
    found = Counter(u.kind for u in unsupported(cp.text, cp.original_text, cp.gap))
    return {
        "granularity": granularity, "ratio": ratio, "kind": doc.kind, "kept_tokens": cp.draft_kept_tokens,
        "input_tokens": cp.draft_original_tokens, **{k: found[k] for k in KINDS},
        "gaps_marked": bool(cp.gap) and render(cp.original_text, cp.kept_spans, cp.gap) == cp.text,
        "evidence": doc.evidence in cp.text, "answer": doc.answer in cp.text,
    }  # fmt: skip


def table(rows: list[dict]) -> str:
    """One line per (granularity, ratio): summed unsupported statements, gap marks and evidence over the docs."""
    out = [
        "| granularity | ratio | docs | kept / input tokens | unsupported numbers | identifiers | fused lines | "
        "split lines | gaps marked | evidence line kept | answer kept |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = dict.fromkeys((r["granularity"], r["ratio"]) for r in rows)
    for g, ratio in keys:
        rs = [r for r in rows if r["granularity"] == g and r["ratio"] == ratio]
        n = len(rs)
        mean = lambda k, rs=rs: sum(r[k] for r in rs) / len(rs)  # noqa: E731
        counts = " | ".join(str(sum(r[k] for r in rs)) for k in KINDS)
        out.append(
            f"| {g} | {ratio} | {n} | {mean('kept_tokens'):.0f} / {mean('input_tokens'):.0f} | {counts} | "
            f"{sum(r['gaps_marked'] for r in rs)}/{n} | {sum(r['evidence'] for r in rs)}/{n} | "
            f"{sum(r['answer'] for r in rs)}/{n} |"
        )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5])
    p.add_argument("--granularities", nargs="+", default=list(GRANULARITIES), choices=GRANULARITIES)
    p.add_argument("--draft", default="smollm2-135m-instruct")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="faithfulness.json")
    args = p.parse_args()

    from draft_rag import DraftEngine

    engine = DraftEngine(draft=args.draft, threads=args.threads)
    rows, t0 = [], time.perf_counter()
    for seed in range(args.seeds):
        doc = structured_doc(seed)
        rows += [dict(seed=seed, **measure(engine, doc, g, r)) for g in args.granularities for r in args.ratios]
    Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"{args.seeds} documents, draft {args.draft}, {args.threads} thread(s), {time.perf_counter() - t0:.0f} s")
    print(table(rows))


if __name__ == "__main__":
    main()
