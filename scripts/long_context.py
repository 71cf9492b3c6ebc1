"""Long prompts: SpecPC's draft seconds and peak memory against prompt length, and a needle at several depths.

The haystack is real text (``pydoc`` of standard-library modules, as ``draft_rag.corpus`` renders it), cut to
each length in draft tokens; one sentence (the needle) is put at each depth and the question asks for it.
Prints a markdown table per length (draft seconds, blocks, peak memory, needle kept) and writes JSON.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/long_context.py --lengths 4096 8192 16384 32768 65536

``--pass-cost 1024 2048 4096 8192`` instead times one plain draft pass (no blocks) per length, interleaved
over ``--repeats``: the cost per token of one pass is what the default block size was chosen from.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from draft_rag.corpus import STDLIB_MODULES

MODULES = STDLIB_MODULES + (  # the demo's modules, then more, for prompts up to 64k tokens
    "collections",
    "pathlib",
    "datetime",
    "typing",
    "argparse",
    "logging",
    "subprocess",
    "threading",
    "socket",
    "csv",
    "decimal",
    "fractions",
    "enum",
    "dataclasses",
    "contextlib",
    "inspect",
    "tempfile",
    "uuid",
)
NEEDLE = "The secret code for the blue door is 7319465."
QUESTION = "What is the secret code for the blue door mentioned in the text above?"
ANSWER = "7319465"


def _rss_peak_mib() -> float:
    """This process's peak resident memory (VmHWM) since the last ``_reset_peak``, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS


def haystack_lines(tokenizer, n_tokens: int) -> list[str]:
    """Lines of real text adding up to about ``n_tokens`` draft tokens."""
    from draft_rag.corpus import stdlib_documents

    lines, total = [], 0
    while True:
        for doc in stdlib_documents(MODULES):
            for line in doc.text.splitlines(keepends=True):
                total += len(tokenizer(line, add_special_tokens=False)["input_ids"])
                lines.append(line)
                if total >= n_tokens:
                    return lines


def prompt_at(lines: list[str], depth: float) -> str:
    at = int(len(lines) * depth)
    return "".join(lines[:at] + ["\n" + NEEDLE + "\n"] + lines[at:])


def pass_cost(args) -> None:
    """Seconds of one draft pass (window scoring, no lookahead) over the first N tokens of the haystack."""
    import torch

    from draft_rag import SpecPCConfig, load_model
    from draft_rag.scoring import draft_scores

    torch.set_num_threads(args.threads)
    lm = load_model(args.draft)
    lines = haystack_lines(lm.tokenizer, max(args.pass_cost))
    ids = lm.tokenizer("".join(lines), add_special_tokens=False)["input_ids"]
    cfg = SpecPCConfig(lookahead_tokens=0)
    times: dict[int, list[float]] = {n: [] for n in args.pass_cost}
    for _ in range(args.repeats):
        for n in args.pass_cost:
            t0, c0 = time.perf_counter(), time.process_time()
            draft_scores(lm.model, ids[:n], cfg)
            times[n].append(time.process_time() - c0)
            print(
                json.dumps(
                    {"tokens": n, "seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(times[n][-1], 2)}
                ),
                flush=True,
            )
    print(
        f"\ntorch threads {torch.get_num_threads()}\n| tokens per pass | CPU seconds (median) | CPU ms per token |\n"
        "|---|---|---|"
    )
    for n, ts in times.items():
        print(f"| {n} | {statistics.median(ts):.1f} | {statistics.median(ts) / n * 1000:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536])
    p.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    p.add_argument(
        "--max-depths",
        type=str,
        nargs="*",
        default=[],
        help="LENGTH=K: at this length run only K depths (spread over --depths), to save time",
    )
    p.add_argument("--budget", type=int, default=1024)
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--draft", default="smollm2-135m-instruct")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="long_context.json")
    p.add_argument("--pass-cost", type=int, nargs="*", help="time single draft passes of these lengths instead")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    if args.pass_cost:
        return pass_cost(args)

    from draft_rag import DraftEngine

    engine = DraftEngine(draft=args.draft, threads=args.threads, block_size=args.block_size)
    import torch

    limits = {int(k): int(v) for k, v in (x.split("=") for x in args.max_depths)}
    rows = []
    print(
        f"draft {args.draft}, window {engine.draft_window}, block size {engine.block_size}, "
        f"torch threads {torch.get_num_threads()}, budget {args.budget}",
        flush=True,
    )
    for length in args.lengths:
        lines = haystack_lines(engine.draft.tokenizer, length)
        depths = args.depths
        if length in limits and limits[length] < len(depths):
            k = limits[length]
            depths = (
                [depths[len(depths) // 2]]
                if k == 1
                else [depths[round(i * (len(depths) - 1) / (k - 1))] for i in range(k)]
            )
        for depth in depths:
            _reset_peak()
            t0, c0 = time.perf_counter(), time.process_time()
            cp = engine.compress(prompt_at(lines, depth), question=QUESTION, budget=args.budget)
            row = {
                "length": length,
                "depth": depth,
                "draft_tokens": cp.draft_original_tokens,
                "draft_seconds": round(cp.seconds["draft"], 2),
                "total_seconds": round(time.perf_counter() - t0, 2),
                "cpu_seconds": round(time.process_time() - c0, 2),
                "blocks": cp.draft_blocks,
                "kept": cp.draft_kept_tokens,
                "needle_kept": ANSWER in cp.text,
                "peak_rss_mib": round(_rss_peak_mib()),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.json).write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1))
    print(
        "\n| prompt tokens | blocks | CPU seconds (median) | CPU s per 1k tokens | wall seconds | peak RSS MiB "
        "| needle kept at depth |"
    )
    print("|---|---|---|---|---|---|---|")
    for length in args.lengths:
        rs = [r for r in rows if r["length"] == length]
        cpu = statistics.median(r["cpu_seconds"] for r in rs)
        wall = statistics.median(r["total_seconds"] for r in rs)
        toks = statistics.median(r["draft_tokens"] for r in rs)
        kept = " ".join(f"{r['depth']:.0%}:{'yes' if r['needle_kept'] else 'NO'}" for r in rs)
        print(
            f"| {toks:,.0f} | {rs[0]['blocks']} | {cpu:.1f} | {cpu / toks * 1000:.2f} | {wall:.0f} | "
            f"{max(r['peak_rss_mib'] for r in rs):,} | {kept} |"
        )


if __name__ == "__main__":
    main()
