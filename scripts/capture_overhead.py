"""Measure SpecPC's draft scoring against a plain draft forward on the same prompts.

    .venv/bin/python scripts/capture_overhead.py [--draft smollm2-135m-instruct] [--lengths 2048 4096] [--repeats 3]

Prints, per prompt length: median wall and CPU seconds of a plain prefill (unwrapped model) and of the scoring
pass (prefill with window capture + the lookahead tokens), the overhead, and the peak RSS of each process
(each mode runs in a fresh subprocess). CPU seconds are steadier than wall time on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def _prompt_ids(tokenizer, n: int) -> list[int]:
    filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
    ids = tokenizer(filler * (n // 10), add_special_tokens=False)["input_ids"]
    return ids[:n]


def _run(draft: str, n: int, mode: str, repeats: int) -> dict:
    from draft_rag import SpecPCConfig, load_model
    from draft_rag.attention import attach
    from draft_rag.scoring import draft_scores

    lm = load_model(draft)
    ids = _prompt_ids(lm.tokenizer, n)
    cfg = SpecPCConfig()
    if mode == "score":
        attach(lm.model)
    wall, cpu = [], []
    for _ in range(repeats + 1):  # the first run warms up
        t, c = time.perf_counter(), time.process_time()
        with torch.no_grad():
            if mode == "plain":
                lm.model(input_ids=torch.tensor([ids]), logits_to_keep=1)
            else:
                draft_scores(lm.model, ids, cfg)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {
        "seconds": statistics.median(wall[1:]),
        "cpu_seconds": statistics.median(cpu[1:]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draft", default="smollm2-135m-instruct")
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps CPU-time figures comparable)")
    p.add_argument("--child", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(_run(args.draft, int(args.child[0]), args.child[1], args.repeats)))
        return
    print(f"draft={args.draft} torch_threads={torch.get_num_threads()}")
    print(
        "| tokens | plain forward s (CPU s) | scoring pass s (CPU s) | overhead wall (CPU) | plain peak RSS MB "
        "| scoring peak RSS MB |"
    )
    print("|---|---|---|---|---|---|")
    for n in args.lengths:
        res = {}
        for mode in ("plain", "score"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--draft",
                    args.draft,
                    "--repeats",
                    str(args.repeats),
                    "--threads",
                    str(args.threads),
                    "--child",
                    str(n),
                    mode,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        p, q = res["plain"], res["score"]
        print(
            f"| {n} | {p['seconds']:.2f} ({p['cpu_seconds']:.2f}) | {q['seconds']:.2f} ({q['cpu_seconds']:.2f}) | "
            f"{q['seconds'] / p['seconds'] - 1:+.1%} ({q['cpu_seconds'] / p['cpu_seconds'] - 1:+.1%}) | "
            f"{res['plain']['peak_rss_mb']:.0f} | {res['score']['peak_rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
