"""The chunk cache: SpecPC's draft seconds per question over the built-in corpus, exact pass against chunks read before.

A sequence of demo-style questions (the demo's eight, then "What does module.function do?" for documented functions
of the corpus) retrieves ~--context-tokens of chunks each as the demo does, so chunks recur across questions in
other orders and company. Per question, in an order that rotates: the exact pass (no cache), the chunk cache
filled as the questions come, and the chunk cache warmed beforehand with every chunk the sequence retrieves (as
``DraftEngine.warm_chunks`` would when an index is built). Prints a markdown summary (medians) and writes JSON.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/chunk_cache.py --questions 32 --json docs/bench/chunk_cache_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from draft_rag import DraftEngine, load_model
from draft_rag.corpus import STDLIB_MODULES, build_index, chunk_documents, stdlib_documents, stdlib_passages
from draft_rag.demo import DEFAULT_RATIO, INSTRUCTION, QUESTIONS

ARMS = ("exact", "as they come", "warmed")


def questions(n: int) -> list[str]:
    """The demo's questions, then ones about documented functions of the corpus, spread over its modules."""
    own = [q for q, _, _ in QUESTIONS]
    passages = stdlib_passages(STDLIB_MODULES)
    step = max(1, len(passages) // max(1, n - len(own)))
    return (own + [f"What does {p['id']} do?" for p in passages[::step]])[:n]


def kept_overlap(a, b) -> float:
    """Characters of the context both results keep, over those either keeps (1.0: the same text)."""
    keep = [{i for s, e in r.kept_spans for i in range(s, e)} for r in (a, b)]
    return len(keep[0] & keep[1]) / max(1, len(keep[0] | keep[1]))


def run(args) -> dict:
    draft = load_model(args.draft)
    engines = {arm: DraftEngine(draft=draft, context_cache_mb=0, chunk_cache_mb=mb)
               for arm, mb in zip(ARMS, (0, args.cache_mb, args.cache_mb))}  # fmt: skip
    index = build_index(chunk_documents(stdlib_documents()), progress=False)
    asked = [(q, index.retrieve(q, draft.tokenizer, args.context_tokens)[::-1]) for q in questions(args.questions)]
    t0 = time.perf_counter()
    union = list({c.id: c for _, chunks in asked for c in chunks}.values())
    engines["warmed"].warm_chunks(union, instruction=INSTRUCTION)
    warm_s = time.perf_counter() - t0
    rows = []
    for i, (q, chunks) in enumerate(asked):
        order = ARMS[i % 3 :] + ARMS[: i % 3]
        got = {arm: engines[arm].compress(chunks=chunks, instruction=INSTRUCTION, question=q, ratio=args.ratio)
               for arm in order}  # fmt: skip
        rows.append({"question": q, "chunks": [c.id for c in chunks], "order": list(order),
                     "draft_tokens": got["exact"].draft_original_tokens,
                     "draft_s": {arm: got[arm].seconds["draft"] for arm in ARMS},
                     "cached_tokens": {arm: got[arm].draft_cached_tokens for arm in ARMS},
                     "kept_overlap_with_exact": kept_overlap(got["exact"], got["warmed"]),
                     "same_as_warmed": got["as they come"].text == got["warmed"].text})  # fmt: skip
        print(f"{i + 1}/{len(asked)} " + " ".join(f"{a}={rows[-1]['draft_s'][a]:.2f}s" for a in ARMS), flush=True)
    return summary(args, rows, engines, union, warm_s)


def summary(args, rows: list[dict], engines: dict, union: list, warm_s: float) -> dict:
    import torch

    median = {arm: statistics.median(r["draft_s"][arm] for r in rows) for arm in ARMS}
    cache = engines["warmed"].chunk_cache
    return {
        "command": "scripts/chunk_cache.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "json"),  # fmt: skip
        "threads": torch.get_num_threads(),
        "questions": len(rows),
        "distinct_chunks": len(union),
        "chunks_per_question": statistics.mean(len(r["chunks"]) for r in rows),
        "draft_tokens_median": statistics.median(r["draft_tokens"] for r in rows),
        "median_draft_s": median,
        "warmed_over_exact": median["warmed"] / median["exact"],
        "as_they_come_over_exact": median["as they come"] / median["exact"],
        "warm_up_s": warm_s,
        "cache_mib": cache.nbytes / 2**20,
        "cache_pieces": len(cache),
        "kept_overlap_with_exact_median": statistics.median(r["kept_overlap_with_exact"] for r in rows),
        "as_they_come_same_as_warmed": sum(r["same_as_warmed"] for r in rows),
        "rows": rows,
    }


def markdown(out: dict) -> str:
    m = out["median_draft_s"]
    return "\n".join([
        f"{out['questions']} questions, {out['chunks_per_question']:.1f} chunks each "
        f"({out['distinct_chunks']} distinct), median {out['draft_tokens_median']:.0f} draft tokens, "
        f"{out['threads']} torch thread(s)",
        "",
        "| draft pass | median seconds | x exact |",
        "|---|---|---|",
        *(f"| {arm} | {m[arm]:.2f} | {m[arm] / m['exact']:.2f} |" for arm in ARMS),
        "",
        f"warm-up (every chunk once): {out['warm_up_s']:.1f} s; cache {out['cache_mib']:.0f} MiB in "
        f"{out['cache_pieces']} pieces; kept text shared with the exact pass (median): "
        f"{out['kept_overlap_with_exact_median']:.0%}; 'as they come' kept the same text as 'warmed' in "
        f"{out['as_they_come_same_as_warmed']}/{out['questions']}",
    ])  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=32)
    p.add_argument("--context-tokens", type=int, default=2000, help="retrieved per question, as the demo does")
    p.add_argument("--ratio", type=float, default=DEFAULT_RATIO)
    p.add_argument("--cache-mb", type=float, default=2048)
    p.add_argument("--draft", default="smollm2-135m-instruct")
    p.add_argument("--json", help="write the summary and every question's row here (and the table beside it, .txt)")
    args = p.parse_args()
    out = run(args)
    print(markdown(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        with open(args.json.removesuffix(".json") + ".txt", "w") as f:
            f.write(markdown(out) + "\n")


if __name__ == "__main__":
    main()
