"""The draft context cache: draft seconds of a first question and of follow-ups over the same context.

Per length, repetitions interleaved: a cold first question (empty cache), a follow-up (a different question over
the same context, its draft KV reused), and the same follow-up cold again (cache cleared) to check that it keeps
exactly the same spans. Prints a markdown table (medians) and writes JSON.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/context_cache.py --lengths 2048 8192 16384 --repeats 2

``--method speckv`` times plain SpecKV's lookahead drafting instead (the draft stage of a generation with the
draft as its own target, eight new tokens), and checks that the follow-up keeps the KV positions a cold run keeps
(per layer and KV head) and generates the same text.
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

from draft_rag import methods  # noqa: E402

FOLLOW_UPS = (
    "Which function is documented first in the text above?",
    "Summarise what the text above says about sorting.",
)


class SpecKVRun:
    """What the table needs of one SpecKV generation, named as a ``CompressedPrompt``'s fields; ``kept_kv`` holds
    the KV positions its prefill kept per layer and KV head (as lists), where a compression keeps ``kept_spans``."""

    def __init__(self, generation, kept_kv: list):
        st = generation.stats
        self.draft_original_tokens, self.draft_blocks = st.original_tokens, 1
        self.draft_cached_tokens, self.text = st.draft_cached_tokens, generation.text
        self.kept_kv, self.draft_seconds = kept_kv, st.seconds["draft"]


KEPT_KV: list = []  # per SpecKV prefill, once recording: the positions kept per layer (None: layer kept whole)


def record_kept_kv() -> None:
    """Make every SpecKV prefill append the KV positions it kept to ``KEPT_KV``."""
    from draft_rag import speckv

    real = speckv.compressed_prefill

    def recording(*args, **kwargs):
        prefilled, stats = real(*args, **kwargs)
        KEPT_KV.append([None if t is None else t.tolist() for t in stats.kept])
        return prefilled, stats

    speckv.compressed_prefill = recording


def same_as_cold(warm, cold) -> bool:
    """Same text, and the same kept spans (SpecPC) or the same kept KV positions per layer and head (SpecKV)."""
    kept = ("kept_kv",) if isinstance(cold, SpecKVRun) else ("kept_spans",)
    return warm.text == cold.text and all(getattr(warm, k) == getattr(cold, k) for k in kept)


def timed(engine, text: str, question: str, budget: int, method: str):
    """(result, draft seconds, CPU seconds): SpecPC's compression (wall seconds), or SpecKV's lookahead drafting
    (``SpecKVRun``; its draft stage's seconds)."""
    t0, c0 = time.perf_counter(), time.process_time()
    if methods.get(method).shortens_prompt:
        result = engine.compress(text, question=question, budget=budget)
        return result, time.perf_counter() - t0, time.process_time() - c0
    run = engine.generate(text, question=question, method=method, budget=budget, max_new_tokens=8)
    result = SpecKVRun(run, KEPT_KV[-1])
    return result, result.draft_seconds, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 16384])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--budget", type=int, default=1024)
    p.add_argument("--draft", default="smollm2-135m-instruct")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-mb", type=float, default=1024)
    p.add_argument("--method", choices=("specpc", "speckv"), default="specpc")
    p.add_argument("--json", default="context_cache.json")
    args = p.parse_args()

    import torch

    from draft_rag import DraftEngine

    shortens = methods.get(args.method).shortens_prompt  # SpecPC; SpecKV drafts its lookahead with a target
    target = None if shortens else args.draft
    if not shortens:
        record_kept_kv()
    engine = DraftEngine(target, draft=args.draft, threads=args.threads, context_cache_mb=args.cache_mb)
    texts = {n: prompt_at(haystack_lines(engine.draft.tokenizer, n), 0.5) for n in args.lengths}
    runs = [_run(engine, args, r, n, text, shortens) for r in range(args.repeats) for n, text in texts.items()]
    threads = torch.get_num_threads()
    meta = {"threads": threads, "method": args.method, "budget": args.budget}
    Path(args.json).write_text(json.dumps({**meta, "runs": runs}, indent=1))
    print(f"\n{args.method}, torch threads {threads}, medians of {args.repeats} interleaved repetitions\n")
    _table(args, runs, shortens)


def _run(engine, args, r: int, n: int, text: str, shortens: bool) -> dict:
    """Repetition ``r`` at ``n`` tokens: the first question, a follow-up from the cache and the same one cold."""
    follow_up = FOLLOW_UPS[r % len(FOLLOW_UPS)]
    engine.context_cache.clear()
    first, first_s, first_cpu = timed(engine, text, QUESTION, args.budget, args.method)
    warm, warm_s, warm_cpu = timed(engine, text, follow_up, args.budget, args.method)
    engine.context_cache.clear()
    cold, cold_s, cold_cpu = timed(engine, text, follow_up, args.budget, args.method)
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
        "same_as_cold": same_as_cold(warm, cold),
        "needle_kept": NEEDLE.split(" is ")[1].rstrip(".") in first.text if shortens else None,
    }
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in run.items()}), flush=True)
    return run


def _table(args, runs: list[dict], shortens: bool) -> None:
    """Print the medians per length as a Markdown table."""
    same = "same kept spans as cold" if shortens else "same answer and KV as cold"
    print("| context tokens | draft passes | first question s | follow-up s | follow-up / first | draft tokens reused "
          f"| {same} |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for n in args.lengths:
        rows = [x for x in runs if x["tokens"] == n]
        first = statistics.median(x["first_s"] for x in rows)
        warm = statistics.median(x["follow_up_s"] for x in rows)
        same = all(x["same_as_cold"] for x in rows)
        reused = statistics.median(x["cached_tokens"] / x["draft_tokens"] for x in rows)
        print(f"| {rows[0]['draft_tokens']} | {rows[0]['blocks']} | {first:.2f} | {warm:.2f} | {warm / first:.2f}x "
              f"| {100 * reused:.0f}% | {'yes' if same else 'NO'} |")  # fmt: skip


if __name__ == "__main__":
    main()
