"""Whether compressing a prompt that fits the target's window pays for itself (``budget="auto"``).

With a local target the draft's scoring pass must cost less than the target prefill it saves. Each model's cost
is ``fixed + per_token * n`` seconds, measured once per engine (``measure_costs``, cached on the engine; assign
``DraftEngine.costs`` to override), so a draft as large as its target never pays and a small draft in front of
a large target pays past a break-even length. A remote target cannot be timed: a prompt pays when its context
is longer than ``min_tokens`` tokens.
"""

from __future__ import annotations

import functools
import statistics
import time

import torch

from .generation import plain_prefill
from .scoring import draft_scores
from .state import Costs, EngineState

PROBE_LENGTHS = (64, 512)  # prompt tokens of the two timed passes per model (the line through them)
PROBE_TEXT = "The committee reviewed the quarterly figures, the open questions and the plan for next year. "


def _line(points: dict[int, float]) -> tuple[float, float]:
    """(fixed, per_token) through two (tokens, seconds) points, neither negative."""
    (n1, t1), (n2, t2) = sorted(points.items())
    per_token = max(0.0, (t2 - t1) / (n2 - n1))
    return max(0.0, t1 - per_token * n1), per_token


def _probe_ids(tokenizer, n: int) -> list[int]:
    ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    return (ids * (n // len(ids) + 1))[:n]


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def measure_costs(engine: EngineState, lengths=PROBE_LENGTHS, repeats: int = 2) -> Costs:
    """Time the engine's draft scoring pass and target prefill at ``lengths`` tokens (median of ``repeats``, after
    one warm-up each). Call with the engine lock held."""
    draft, target = engine.draft, engine.target
    cfg = engine.specpc.for_draft(draft.model)
    points = {"draft": {}, "target": {}}
    for n in lengths:
        d_ids, t_ids = _probe_ids(draft.tokenizer, n), _probe_ids(target.tokenizer, n)
        runs = {
            "draft": functools.partial(draft_scores, draft.model, d_ids, cfg),
            "target": functools.partial(plain_prefill, target.model, t_ids),
        }
        for name, fn in runs.items():
            fn()  # warm-up
            points[name][n] = _median_seconds(fn, repeats)
    return Costs(_line(points["draft"]), _line(points["target"]))


def why_whole(
    engine: EngineState, n_draft: int, n_target: int, kept_draft: int, n_context: int, min_tokens: int
) -> str:
    """Why a prompt that fits the window is better left whole, or "" when compressing it pays.

    ``n_draft`` / ``n_target``: the prompt's tokens for the draft and the target; ``kept_draft``: the fewest draft
    tokens the budget could keep; ``n_context``: its compressible tokens (draft tokenizer).
    """
    if engine.target is None:
        if n_context > min_tokens:
            return ""
        return f"fits the window and its context ({n_context} tokens) is not longer than min_tokens={min_tokens}"
    if engine.costs is None:
        engine.costs = measure_costs(engine)
    costs = engine.costs
    kept_target = n_target * kept_draft / max(1, n_draft)
    spend = costs.draft_seconds(n_draft) + costs.target_seconds(kept_target)
    whole = costs.target_seconds(n_target)
    if spend < whole:
        return ""
    return (
        f"fits the window and compressing would not pay: the draft's pass (~{costs.draft_seconds(n_draft):.2f} s) "
        f"and the shorter prefill (~{costs.target_seconds(kept_target):.2f} s) cost more than the whole prefill "
        f"(~{whole:.2f} s)"
    )
