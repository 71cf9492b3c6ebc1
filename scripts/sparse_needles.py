"""Sparse against dense prefill on needle prompts: does the vertical-slash prefill lose a needle dense finds?

The target answers the long-context needle prompt (``long_context.py``'s haystack, needle and question) with
method ``full``, once with a dense prefill and once with ``sparse_prefill=True`` (the paper's settings), the two
interleaved per prompt. Prints a markdown table (found by each, prefill seconds, sparse layers) and writes JSON.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/sparse_needles.py --target gemma3-270m --lengths 8192 16384
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from long_context import ANSWER, QUESTION, haystack_lines, prompt_at

PREFIX = "The secret code for the blue door is"


def run(engine, text: str, sparse: bool, max_new_tokens: int) -> dict:
    t0 = time.perf_counter()
    g = engine.generate(
        text, question=QUESTION, answer_prefix=PREFIX, method="full", max_new_tokens=max_new_tokens,
        sparse_prefill=sparse,
    )  # fmt: skip
    return {
        "found": ANSWER in g.text,
        "answer": g.text,
        "prompt_tokens": g.stats.prompt_tokens,
        "prefill_seconds": round(g.stats.seconds["prefill"], 2),
        "total_seconds": round(time.perf_counter() - t0, 2),
        "sparse_layers": g.stats.sparse_layers,
    }


def earlier_rows(path: Path) -> list[dict]:
    """The rows an interrupted run wrote to ``path`` (none if it is missing)."""
    return json.loads(path.read_text())["rows"] if path.exists() else []


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="gemma3-270m")
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768])
    p.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="sparse_needles", help="writes OUT.json (after every prompt) and OUT.txt")
    p.add_argument("--resume", action="store_true", help="keep OUT.json's rows and run only the prompts it lacks")
    args = p.parse_args(argv)

    import torch

    from draft_rag import DraftEngine

    engine = DraftEngine(target=args.target, threads=args.threads)
    head = f"target {args.target}, window {engine.target_window}, torch threads {torch.get_num_threads()}"
    lines_out, rows = [head, ""], earlier_rows(Path(args.out + ".json")) if args.resume else []
    print(head, flush=True)
    done = {(r["length"], r["depth"]) for r in rows}
    for length in args.lengths:
        todo = [depth for depth in args.depths if (length, depth) not in done]
        lines = haystack_lines(engine.target.tokenizer, length) if todo else []  # a 32k haystack takes a while
        for depth in todo:
            text = prompt_at(lines, depth)
            row = {"length": length, "depth": depth}
            for mode in ("dense", "sparse"):
                row[mode] = run(engine, text, mode == "sparse", args.max_new_tokens)
            rows.append(row)
            print(json.dumps(row), flush=True)
            Path(args.out + ".json").write_text(json.dumps({"head": head, "rows": rows}, indent=1))
    table = [
        "| prompt tokens | needle depth | dense finds it | sparse finds it | dense prefill s | sparse prefill s "
        "| sparse layers |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d, s = r["dense"], r["sparse"]
        table.append(
            f"| {d['prompt_tokens']:,} | {r['depth']:.0%} | {'yes' if d['found'] else 'no'} | "
            f"{'yes' if s['found'] else 'no'} | {d['prefill_seconds']:.1f} | {s['prefill_seconds']:.1f} | "
            f"{s['sparse_layers']} |"
        )
    lost = sum(r["dense"]["found"] and not r["sparse"]["found"] for r in rows)
    summary = f"needles dense finds and sparse loses: {lost} of {sum(r['dense']['found'] for r in rows)}"
    Path(args.out + ".txt").write_text("\n".join(lines_out + table + ["", summary]) + "\n")
    print("\n".join(table + ["", summary]))


if __name__ == "__main__":
    main()
