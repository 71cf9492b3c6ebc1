"""``draft-rag cost``: its options and command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ...builtins import DEFAULT_MODEL
from ...cli_args import add_options, add_sparse_args, fraction, option, positive_int, sparse_from_args
from .plot import plot
from .runs import run_cost
from .shapes import DEFAULT_BUDGETS, METHODS, SHAPES, BudgetLevel
from .tables import overhead_table, sparse_table, speedup_table, table


def _cmd_cost(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.report_only:
        rows = [
            r
            for d in [out, *(Path(m) for m in args.merge or ())]
            for r in json.loads((d / "cost.json").read_text())["rows"]
        ]
    else:
        budgets = [BudgetLevel(r, k) for r, k in zip(args.ratios, args.kv_budgets)]
        if len(args.ratios) != len(args.kv_budgets):
            raise ValueError("--ratios and --kv-budgets must have the same number of values (one per budget level)")
        rows = run_cost(
            args.draft,
            args.shapes,
            args.lengths,
            budgets=budgets,
            repeats=args.repeats,
            new_tokens=args.new_tokens,
            slice_layers=None if args.no_slice else args.slice,
            full_shapes=args.full_shapes or (),
            device=args.device,
            dtype=args.dtype,
            out=out,
            methods=args.methods,
            sparse=sparse_from_args(args),
        )
    parts = [table(rows), speedup_table(rows), sparse_table(rows), overhead_table(rows)]
    md = "\n\n".join(part for part in parts if part)
    (out / "cost.md").write_text(md + "\n")
    plot(rows, out / "cost.png")
    print(md)
    return 0


OPTIONS = (
    option("--draft", default=DEFAULT_MODEL),
    option("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES)),
    option("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="full always runs"),
    option("--lengths", nargs="+", type=positive_int, default=[2048, 4096, 8192], help="prompt draft tokens"),
    option(
        "--ratios",
        nargs="+",
        type=fraction,
        default=[b.ratio for b in DEFAULT_BUDGETS],
        help="SpecPC prompt ratio per budget level",
    ),
    option(
        "--kv-budgets",
        nargs="+",
        type=positive_int,
        default=[b.kv for b in DEFAULT_BUDGETS],
        help="SpecKV entries per layer and KV head, per budget level",
    ),
    option("--repeats", type=positive_int, default=2, help="interleaved repetitions (medians reported)"),
    option("--new-tokens", type=positive_int, default=8, help="tokens decoded per cell"),
    option(
        "--slice",
        type=positive_int,
        default=1,
        metavar="L",
        help="targets run their first L layers; figures are scaled to the full depth (labelled scaled)",
    ),
    option("--no-slice", action="store_true", help="run every target with all its layers"),
    option("--full-shapes", nargs="*", choices=list(SHAPES), help="shapes run with all layers anyway"),
    option("--device", help="cpu or cuda (default: cuda when available)"),
    option("--dtype", help="default: bfloat16 on CUDA, float32 on CPU"),
    option("--threads", type=positive_int, default=argparse.SUPPRESS, help="torch CPU threads"),
    option("--out", default="cost-out", help="folder for cost.json, cost.md, cost.png"),
    option("--report-only", action="store_true", help="redo the table and plot from --out's cost.json"),
    option("--merge", nargs="+", metavar="DIR", help="with --report-only: also the rows of these runs' cost.json"),
)


def add_parser(sub) -> None:
    """Add ``draft-rag cost`` to the main parser."""
    p = sub.add_parser("cost", help="time full/specpc/speckv/speckv-pc with large random-weight target shapes")
    add_options(p, OPTIONS)
    add_sparse_args(p)
    p.set_defaults(func=_cmd_cost)
