"""Checks behind ``draft-rag cost``: is per-layer scaling right, and how much of a prefill is attention?

    python scripts/cost_checks.py scaling [--shape smollm2-360m] [--length 2048] [--repeats 2]
    python scripts/cost_checks.py attention [--shapes smollm2-1.7b] [--lengths 4096 8192]
    python scripts/cost_checks.py lookahead [--length 1024] [--tokens 16] [--repeats 3]
    python scripts/cost_checks.py overhead [--lengths 4096 8192] [--repeats 3]

``scaling``: the full-context prefill and decode of a random-weight target with all its layers against the
same figures scaled from a 1-layer slice (the cost bench's method), interleaved, medians.
``attention``: seconds of one decoder layer's prefill (forward hooks) and of its causal SDPA kernel alone on
tensors of the layer's shape: the share of the prefill that a sparse prefill could cut.
``lookahead``: SpecKV's ``draft_lookahead`` against ``model.generate`` for the same greedy tokens.
``overhead``: SpecPC's scoring pass (``draft_scores``, default config) against a plain draft forward of the same
prompt, interleaved in one process; wall and CPU seconds (CPU seconds are steadier on a loaded machine).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from draft_rag.bench import cost
from draft_rag.generation import plain_prefill
from draft_rag.models import load_model


def _prompt_ids(lm, length: int) -> list[int]:
    from draft_rag.prompt import tokenize, wrap

    segments = cost.prompt(lm.tokenizer, length).segments
    return tokenize(lm.tokenizer, wrap(segments, lm.tokenizer, "chat")).ids


def _full_cell(target, ids, new_tokens: int) -> tuple[float, float, float, float]:
    """(prefill s, seconds in layers during prefill, decode s/token, in layers per token)."""
    with torch.no_grad():
        with cost.LayerClock(target.model) as lp:
            t0 = time.perf_counter()
            state = plain_prefill(target.model, ids)
            prefill = time.perf_counter() - t0
        with cost.LayerClock(target.model) as ld:
            step = cost.decode(target.model, state, new_tokens)
    return prefill, lp.seconds, step, ld.seconds / (new_tokens - 1)


def check_scaling(args) -> None:
    draft = load_model(args.draft)
    ids = _prompt_ids(draft, args.length)
    layers = cost.SHAPES[args.shape]["num_hidden_layers"]
    models = {"slice": cost.build_target(args.shape, draft, 1), "full": cost.build_target(args.shape, draft)}
    res: dict = {"slice": [], "full": []}
    for _ in range(args.repeats):
        for name, m in models.items():
            res[name].append(_full_cell(m, ids, args.new_tokens))
    med = {k: [statistics.median(r[i] for r in v) for i in range(4)] for k, v in res.items()}
    s = med["slice"]
    print(f"{args.shape}, {len(ids)} tokens, torch_threads={torch.get_num_threads()}, medians of {args.repeats}")
    print(f"prefill s: measured {med['full'][0]:.2f}, scaled from 1 layer {cost.scale(s[0], s[1], 1, layers):.2f}")
    print(f"decode s/token: measured {med['full'][2]:.3f}, scaled from 1 layer {cost.scale(s[2], s[3], 1, layers):.3f}")


def check_attention(args) -> None:
    draft = load_model(args.draft)
    print(f"torch_threads={torch.get_num_threads()}, medians of {args.repeats}")
    print("| target | tokens | layer prefill s | causal SDPA s | attention share |\n|---|---|---|---|---|")
    for shape in args.shapes:
        target = cost.build_target(shape, draft, 1)
        s = cost.SHAPES[shape]
        h, hkv, d = s["num_attention_heads"], s["num_key_value_heads"], s["hidden_size"] // s["num_attention_heads"]
        for length in args.lengths:
            ids = _prompt_ids(draft, length)
            n = len(ids)
            q = torch.randn(1, h, n, d)
            k, v = torch.randn(1, hkv, n, d), torch.randn(1, hkv, n, d)
            layer, sdpa = [], []
            for _ in range(args.repeats):
                layer.append(_full_cell(target, ids, 2)[1])
                t0 = time.perf_counter()
                torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=hkv != h)
                sdpa.append(time.perf_counter() - t0)
            a, b = statistics.median(layer), statistics.median(sdpa)
            print(f"| {shape} | {n} | {a:.2f} | {b:.2f} | {b / a:.0%} |")


def check_lookahead(args) -> None:
    from draft_rag.speckv import draft_lookahead

    lm = load_model(args.draft)
    ids = _prompt_ids(lm, args.length)
    x = torch.tensor([ids])
    times: dict = {"draft_lookahead": [], "model.generate": []}
    for _ in range(args.repeats + 1):  # the first round warms up
        t0 = time.perf_counter()
        ours = draft_lookahead(lm.model, ids, args.tokens)
        times["draft_lookahead"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = lm.model.generate(x, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False)
        times["model.generate"].append(time.perf_counter() - t0)
    same = ours == ref[0, len(ids) :].tolist()
    print(
        f"{len(ids)} prompt tokens, {args.tokens} new tokens, torch_threads={torch.get_num_threads()}, "
        f"medians of {args.repeats}, same tokens: {same}"
    )
    for name, t in times.items():
        print(f"{name}: {statistics.median(t[1:]):.2f} s")


def check_overhead(args) -> None:
    from draft_rag import SpecPCConfig
    from draft_rag.scoring import draft_scores

    lm = load_model(args.draft)
    print(f"torch_threads={torch.get_num_threads()}, medians of {args.repeats} interleaved (after one warm-up each)")
    print("| tokens | plain forward s (CPU s) | scoring pass s (CPU s) | overhead wall (CPU) |\n|---|---|---|---|")
    runs = {
        "plain": lambda ids: lm.model(input_ids=torch.tensor([ids]), logits_to_keep=1),
        "score": lambda ids: draft_scores(lm.model, ids, SpecPCConfig()),
    }
    for length in args.lengths:
        ids = _prompt_ids(lm, length)
        times: dict = {k: [] for k in runs}
        for _ in range(args.repeats + 1):
            for name, fn in runs.items():
                t, c = time.perf_counter(), time.process_time()
                with torch.no_grad():
                    fn(ids)
                times[name].append((time.perf_counter() - t, time.process_time() - c))
        (pw, pc), (sw, sc) = ([statistics.median(x[i] for x in times[k][1:]) for i in (0, 1)] for k in runs)
        print(
            f"| {len(ids)} | {pw:.2f} ({pc:.2f}) | {sw:.2f} ({sc:.2f}) | {sw / pw - 1:+.1%} ({sc / pc - 1:+.1%}) |",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("check", choices=("scaling", "attention", "lookahead", "overhead"))
    p.add_argument("--draft", default="smollm2-135m-instruct")
    p.add_argument("--shape", default="smollm2-360m", choices=list(cost.SHAPES))
    p.add_argument("--shapes", nargs="+", default=["smollm2-1.7b"], choices=list(cost.SHAPES))
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    {"scaling": check_scaling, "attention": check_attention, "lookahead": check_lookahead, "overhead": check_overhead}[
        args.check
    ](args)


if __name__ == "__main__":
    main()
