"""Where compression pays for itself: each pair's measured costs and ``budget="auto"``'s decision per prompt length.

For each draft -> target pair, ``payoff.measure_costs`` times the draft's scoring pass and the target's prefill (the
line through 64 and 512 tokens, as the engine does at its first ``auto`` request); the table gives the predicted
seconds of the whole prefill against draft pass + the prefill of the kept tokens, and whether ``auto`` compresses.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/payoff.py --pairs smollm2-135m-instruct:smollm2-135m-instruct \
        smollm2-135m-instruct:gemma3-270m smollm2-135m-instruct:shape=smollm2-1.7b

A target ``shape=NAME`` is ``draft-rag cost``'s random-weight model of that public shape, every layer (cost does
not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", nargs="+", default=["smollm2-135m-instruct:smollm2-135m-instruct"],
                   help="DRAFT:TARGET (TARGET may be shape=NAME, a random-weight draft-rag cost shape)")  # fmt: skip
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--kept", type=float, nargs="+", default=[0.25, 0.5], help="kept shares of the prompt")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="payoff", help="writes OUT.json and OUT.txt")
    args = p.parse_args()

    import torch

    from draft_rag import DraftEngine
    from draft_rag.payoff import measure_costs

    lines = [
        f"torch threads {args.threads}; seconds = fixed + per-token x tokens, from passes of 64 and 512 tokens",
        "",
        "| draft -> target | draft s/1k tokens | target s/1k tokens | prompt tokens | kept | whole prefill s "
        "| draft + kept prefill s | auto compresses |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for pair in args.pairs:
        draft, target = pair.split(":")
        if target.startswith("shape="):
            from draft_rag import load_model
            from draft_rag.bench.cost import build_target

            draft = load_model(draft)
            target = build_target(target.removeprefix("shape="), draft)
        engine = DraftEngine(target=target, draft=draft, threads=args.threads)
        costs = measure_costs(engine)
        torch.set_num_threads(args.threads)
        for n in args.lengths:
            for kept in args.kept:
                whole = costs.target_seconds(n)
                spend = costs.draft_seconds(n) + costs.target_seconds(kept * n)
                rows.append({"pair": pair, "costs": [costs.draft, costs.target], "tokens": n, "kept": kept,
                             "whole_s": whole, "compressed_s": spend, "pays": spend < whole})  # fmt: skip
                name = pair.replace(":", " -> ").replace("shape=", "")
                lines.append(
                    f"| {name} | {1000 * costs.draft[1]:.2f} | {1000 * costs.target[1]:.2f} | {n} | {kept:.0%} "
                    f"| {whole:.1f} | {spend:.1f} | {'yes' if spend < whole else 'no'} |"
                )
        print("\n".join(lines[-len(args.lengths) * len(args.kept) :]), flush=True)
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))
    Path(args.out + ".txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
