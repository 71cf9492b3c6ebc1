"""The command line's shared argument types and option groups: number checks for argparse, ``--budget``, the
SpecPC and sparse-prefill options and the configs they build, model checks, and options declared as data."""

from __future__ import annotations

import argparse
import logging
import math

from .config import SparsePrefillConfig, SpecPCConfig
from .units import GRANULARITIES

logger = logging.getLogger("draft_rag")

Option = tuple[tuple[str, ...], dict]


def option(*flags: str, **kwargs) -> Option:
    """One option as data: its flags and ``add_argument``'s keywords."""
    return flags, kwargs


def add_options(p, options: tuple[Option, ...]) -> None:
    """Add options declared as data (``option(...)`` each) to a parser or group."""
    for flags, kwargs in options:
        p.add_argument(*flags, **kwargs)


class InputError(ValueError):
    """Bad input found by the CLI before any model loads (exit code 2)."""


def _number(text: str, parse, ok, expected: str):
    """argparse type helper: ``parse(text)`` if it parses and passes ``ok``, else a one-line error."""
    try:
        value = parse(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(text, int, lambda v: v >= 1, "an integer >= 1")


def fraction(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    return _number(text, float, lambda v: 0 < v <= 1, "a number in (0, 1]")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    return _number(text, float, lambda v: 0 < v < math.inf, "a number of seconds > 0")


def non_negative(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(text, float, lambda v: 0 <= v < math.inf, "a number >= 0")


def check_model_args(args, *names: str) -> None:
    """Each model option (``--draft``...) names an alias, a hub id, or a local folder / .gguf that exists."""
    from .models import check_ref

    for name in names:
        ref = getattr(args, name)
        if ref is not None:
            try:
                check_ref(ref)
            except (OSError, ValueError) as exc:
                raise InputError(f"--{name}: {exc}") from None


def budget_arg(text: str) -> int | str:
    """``--budget``: a number of tokens, ``auto`` (fit the context window) or ``adaptive`` (the draft decides)."""
    if text in ("auto", "adaptive"):
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a number of tokens >= 1, 'auto' or 'adaptive', got {text!r}"
        ) from None


class DeprecatedAlias(argparse.Action):
    """An old option name kept working: stores its value under the new option's ``dest`` and warns to use ``new``."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        logger.warning("%s is deprecated and will be removed: use %s", option_string, self.new)
        setattr(namespace, self.dest, values)


def add_budget_args(p: argparse.ArgumentParser, required: bool = False, kv: bool = False) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    extra = "; for KV methods: KV entries kept per layer and KV head" if kv else ""
    g.add_argument(
        "--budget",
        type=budget_arg,
        help="keep this many prompt tokens (draft tokenizer); 'auto': as many as fit the context window; 'adaptive': "
        "as many as the draft's attention needs (--coverage)" + extra,
    )
    g.add_argument("--ratio", type=fraction, help="fraction of the context kept, question on top, in (0, 1]" + extra)


def add_specpc_args(p: argparse.ArgumentParser) -> None:
    """The SpecPC knobs (paper defaults) as options."""
    g = p.add_argument_group("SpecPC settings (paper defaults)")
    d = SpecPCConfig()
    helps = {
        "kernel_size": "default: by the draft's family (Qwen 64, others 32)",
        "neighbor_tokens": "default: the kernel size",
    }
    for name in ("window_size", "kernel_size", "neighbor_tokens", "starting_layer_index"):
        g.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name), help=helps.get(name))
    g.add_argument(
        "--pc-lookahead-tokens",
        dest="lookahead_tokens",
        type=non_negative_int,
        default=d.lookahead_tokens,
        help="SpecPC's lookahead: draft tokens generated, all but the last scored (default 1: the prefill window only)",
    )
    g.add_argument("--lookahead-tokens", dest="lookahead_tokens", type=non_negative_int, action=DeprecatedAlias,
                   new="--pc-lookahead-tokens")  # fmt: skip
    g.add_argument("--pool-type", choices=("max", "avg", "none"), default=d.pool_type)
    g.add_argument("--reduction-type", choices=("max", "mean"), default=d.reduction_type)
    g.add_argument("--no-weighted-query", dest="weighted_query", action="store_false")
    g.add_argument(
        "--granularity",
        choices=GRANULARITIES,
        default=d.granularity,
        help=f"keep whole units of this kind (default {d.granularity}); 'token': the paper's token-level SpecPC",
    )
    g.add_argument("--gap", default=d.gap, help=f"the mark where text was dropped between kept units (default {d.gap})")
    g.add_argument(
        "--coverage",
        type=fraction,
        default=None,
        help="with --budget adaptive: the share of the context's draft attention kept (default 0.9)",
    )
    g.add_argument(
        "--block-size",
        type=positive_int,
        help="most draft tokens per pass; longer prompts are scored in blocks "
        "(default 2048, at most the draft's window)",
    )


def specpc_from_args(args) -> SpecPCConfig:
    """The SpecPC options as a config; ``--coverage`` without ``--budget adaptive`` is refused, not ignored."""
    if args.coverage is not None and getattr(args, "budget", None) != "adaptive":
        raise InputError("--coverage sets the adaptive budget: give it with --budget adaptive (or drop it)")
    return SpecPCConfig(
        window_size=args.window_size,
        kernel_size=args.kernel_size,
        neighbor_tokens=args.neighbor_tokens,
        starting_layer_index=args.starting_layer_index,
        lookahead_tokens=args.lookahead_tokens,
        pool_type=args.pool_type,
        reduction_type=args.reduction_type,
        weighted_query=args.weighted_query,
        granularity=args.granularity,
        gap=args.gap,
        coverage=args.coverage,
    )


def add_sparse_args(p) -> None:
    """``--sparse-prefill`` and its settings (the paper's names and defaults)."""
    d = SparsePrefillConfig()
    g = p.add_argument_group("sparse prefill (local target; prefills longer than vertical + window tokens)")
    g.add_argument("--sparse-prefill", action="store_true", help="vertical-slash sparse prefill, as the paper's SpecKV")
    g.add_argument(
        "--prefill-vertical-size",
        type=positive_int,
        default=d.prefill_vertical_size,
        help="key columns every query block reads (chosen by the last queries' attention)",
    )
    g.add_argument("--prefill-window-size", type=positive_int, default=d.prefill_window_size,
                   help="keys before each query block that it reads (the local band)")  # fmt: skip


def sparse_from_args(args) -> SparsePrefillConfig | None:
    if not args.sparse_prefill:
        return None
    return SparsePrefillConfig(
        prefill_vertical_size=args.prefill_vertical_size, prefill_window_size=args.prefill_window_size
    )


def add_threads_arg(p: argparse.ArgumentParser, default) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=default,
        help="torch CPU threads for the whole run (on a busy machine 1 is often fastest)",
    )
