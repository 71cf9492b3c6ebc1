"""The draft context cache: draft seconds of a first question and of follow-ups over the same context.

Per length, repetitions interleaved: a cold first question (empty cache), a follow-up (a different question over
the same context, its draft KV reused), and the same follow-up cold again (cache cleared) to check that it keeps
exactly the same spans. Prints a markdown table (medians) and writes JSON.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/context_cache.py --lengths 2048 8192 16384 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from long_context import NEEDLE, QUESTION, haystack_lines, prompt_at  # noqa: E402

FOLLOW_UPS = (
    "Which function is documented first in the text above?",
    "Summarise what the text above says about sorting.",
)


def timed(engine, text: str, question: str, budget: int):
    """(CompressedPrompt, wall seconds, CPU seconds) of one compression."""
    t0, c0 = time.perf_counter(), time.process_time()
    result = engine.compress(text, question=question, budget=budget)
    return result, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 16384])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--budget", type=int, default=1024)
    p.add_argument("--draft", default="smollm2-135m-instruct")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-mb", type=float, default=1024)
    p.add_argument("--json", default="context_cache.json")
    args = p.parse_args()

    import torch

    from draft_rag import DraftEngine

    engine = DraftEngine(draft=args.draft, threads=args.threads, context_cache_mb=args.cache_mb)
    texts = {n: prompt_at(haystack_lines(engine.draft.tokenizer, n), 0.5) for n in args.lengths}
    runs = []
    for r in range(args.repeats):
        for n, text in texts.items():
            follow_up = FOLLOW_UPS[r % len(FOLLOW_UPS)]
            engine.context_cache.clear()
            first, first_s, first_cpu = timed(engine, text, QUESTION, args.budget)
            warm, warm_s, warm_cpu = timed(engine, text, follow_up, args.budget)
            engine.context_cache.clear()
            cold, cold_s, cold_cpu = timed(engine, text, follow_up, args.budget)
            run = {
                "tokens": n,
                "repeat": r,
                "draft_tokens": first.draft_original_tokens,
                "blocks": first.draft_blocks,
                "first_s": first_s,
                "first_cpu_s": first_cpu,
                "follow_up_s": warm_s,
                "follow_up_cpu_s": warm_cpu,
                "cold_follow_up_s": cold_s,
                "cached_tokens": warm.draft_cached_tokens,
                "cache_mib": engine.context_cache.nbytes / 2**20,
                "same_spans": warm.kept_spans == cold.kept_spans and warm.text == cold.text,
                "needle_kept": NEEDLE.split(" is ")[1].rstrip(".") in first.text,
            }
            runs.append(run)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in run.items()}), flush=True)
    Path(args.json).write_text(json.dumps({"threads": torch.get_num_threads(), "runs": runs}, indent=1))
    print(f"\ntorch threads {torch.get_num_threads()}, medians of {args.repeats} interleaved repetitions\n")
    print("| context tokens | draft passes | first question s | follow-up s | follow-up / first | draft tokens reused "
          "| same kept spans as cold |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for n in args.lengths:
        rows = [x for x in runs if x["tokens"] == n]
        first = statistics.median(x["first_s"] for x in rows)
        warm = statistics.median(x["follow_up_s"] for x in rows)
        same = all(x["same_spans"] for x in rows)
        reused = statistics.median(x["cached_tokens"] / x["draft_tokens"] for x in rows)
        print(f"| {rows[0]['draft_tokens']} | {rows[0]['blocks']} | {first:.2f} | {warm:.2f} | {warm / first:.2f}x "
              f"| {100 * reused:.0f}% | {'yes' if same else 'NO'} |")  # fmt: skip


if __name__ == "__main__":
    main()
