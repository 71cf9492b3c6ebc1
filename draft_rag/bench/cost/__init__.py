"""``draft-rag cost``: what each method costs with a large target, measured in one process.

Cost does not depend on the weights, so each target is built from a public architecture config with random
weights and the draft's vocabulary (the draft's tokenizer then serves both). Every stage runs through the engine
users run (``DraftEngine.prepare``): per prompt length and repetition a reader engine (the draft as its own
target) runs each draft stage once (a plain draft forward, SpecPC's scoring per budget, SpecKV's lookahead,
SpecKV-PC's scoring per budget), then every target's engine runs every method on those stages (``prepare(...,
drafted=)``), so load drifts hit all methods alike. A target too slow for the machine runs as a slice of its
first layers (``slice_layers``): forward hooks time its decoder layers, and every target figure is extrapolated
linearly in layers from that slice (labelled "scaled"); draft figures are never scaled. With a
``SparsePrefillConfig`` the full, speckv and speckv-pc cells also run with a vertical-slash sparse prefill
(labelled "+sparse"); dense prefills time their attention kernel too (``attention_share`` of the prefill's layer
time).

Modules: ``shapes`` (the target shapes, budget levels, ``build_target``), ``timing`` (layer and attention clocks,
peak memory, decode), ``runs`` (draft stages, target cells, ``run_cost``, medians), ``tables`` (the Markdown
tables), ``plot`` and ``cli`` (``draft-rag cost``).
"""

from .plot import plot
from .runs import (
    _row,
    cells_for,
    draft_stages,
    engines,
    meta,
    options,
    prompt,
    reader,
    run_cost,
    save,
    summarize,
    target_run,
)
from .shapes import DEFAULT_BUDGETS, METHODS, SHAPES, BudgetLevel, build_target, target_params
from .tables import budget_label, overhead_table, sparse_table, speedup_table, table
from .timing import AttentionClock, LayerClock, PeakMemory, decode, scale

_budget_label = budget_label  # the name tests and scripts knew

__all__ = [
    "DEFAULT_BUDGETS",
    "METHODS",
    "SHAPES",
    "AttentionClock",
    "BudgetLevel",
    "LayerClock",
    "PeakMemory",
    "_budget_label",
    "_row",
    "budget_label",
    "build_target",
    "cells_for",
    "decode",
    "draft_stages",
    "engines",
    "meta",
    "options",
    "overhead_table",
    "plot",
    "prompt",
    "reader",
    "run_cost",
    "save",
    "scale",
    "sparse_table",
    "speedup_table",
    "summarize",
    "table",
    "target_params",
    "target_run",
]
