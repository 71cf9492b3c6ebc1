"""Measure SpecPC's draft scoring against a plain draft forward on the same prompts.

    .venv/bin/python scripts/capture_overhead.py [--draft smollm2-135m-instruct] [--lengths 2048 4096] [--repeats 3]

Prints, per prompt length: median seconds of a plain prefill, of the scoring pass (prefill with window
capture + the lookahead tokens), the overhead, and the peak RSS of each (measured in fresh subprocesses).
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
    attach(lm.model)  # the same kernel path for both modes; only the observer differs
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        t = time.perf_counter()
        with torch.no_grad():
            if mode == "plain":
                lm.model(input_ids=torch.tensor([ids]), logits_to_keep=1)
            else:
                draft_scores(lm.model, ids, cfg)
        times.append(time.perf_counter() - t)
    return {"seconds": statistics.median(times[1:]), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draft", default="smollm2-135m-instruct")
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_run(args.draft, int(args.child[0]), args.child[1], args.repeats)))
        return
    print(f"draft={args.draft} torch_threads={torch.get_num_threads()}")
    print("| tokens | plain forward s | scoring pass s | overhead | plain peak RSS MB | scoring peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for n in args.lengths:
        res = {}
        for mode in ("plain", "score"):
            out = subprocess.run([sys.executable, __file__, "--draft", args.draft, "--repeats", str(args.repeats),
                                  "--child", str(n), mode], capture_output=True, text=True, check=True)
            res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        over = res["score"]["seconds"] / res["plain"]["seconds"] - 1
        print(f"| {n} | {res['plain']['seconds']:.2f} | {res['score']['seconds']:.2f} | {over:+.1%} | "
              f"{res['plain']['peak_rss_mb']:.0f} | {res['score']['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
