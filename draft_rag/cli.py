"""The ``draft-rag`` command line: compress, generate, models (and subcommands added by other modules)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from .config import SpecPCConfig
from .models import BUILTIN_MODELS, DEFAULT_MODEL

logger = logging.getLogger("draft_rag")


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def add_budget_args(p: argparse.ArgumentParser, required: bool = False, kv: bool = False) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    extra = "; for KV methods: KV entries kept per layer and KV head" if kv else ""
    g.add_argument("--budget", type=int, help="keep this many prompt tokens (draft tokenizer)" + extra)
    g.add_argument("--ratio", type=float, help="keep this fraction of the prompt tokens, in (0, 1]" + extra)


def add_specpc_args(p: argparse.ArgumentParser) -> None:
    """The SpecPC knobs (paper defaults) as options."""
    g = p.add_argument_group("SpecPC settings (paper defaults)")
    d = SpecPCConfig()
    for name in ("window_size", "kernel_size", "neighbor_tokens", "starting_layer_index", "lookahead_tokens"):
        g.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    g.add_argument("--pool-type", choices=("max", "avg", "none"), default=d.pool_type)
    g.add_argument("--reduction-type", choices=("max", "mean"), default=d.reduction_type)
    g.add_argument("--no-weighted-query", dest="weighted_query", action="store_false")


def specpc_from_args(args) -> SpecPCConfig:
    return SpecPCConfig(window_size=args.window_size, kernel_size=args.kernel_size, neighbor_tokens=args.neighbor_tokens,
                        starting_layer_index=args.starting_layer_index, lookahead_tokens=args.lookahead_tokens,
                        pool_type=args.pool_type, reduction_type=args.reduction_type, weighted_query=args.weighted_query)


def _cmd_compress(args) -> int:
    from .engine import DraftEngine

    engine = DraftEngine(draft=args.draft, specpc=specpc_from_args(args))
    t0 = time.perf_counter()
    cp = engine.compress(_read(args.file), question=args.question, budget=args.budget, ratio=args.ratio)
    seconds = time.perf_counter() - t0
    if args.html:
        from .html import write_html
        write_html(cp, args.html)
        logger.info("wrote %s", args.html)
    if args.json:
        out = cp.to_dict()
        out["seconds"] = round(seconds, 3)
        print(json.dumps({k: out[k] for k in ("text", "original_tokens", "compressed_tokens", "kept_spans", "seconds")}))
    else:
        print(cp.text)
    return 0


def _cmd_generate(args) -> int:
    from .engine import DraftEngine

    engine = DraftEngine(target=args.target, draft=args.draft, specpc=specpc_from_args(args))
    kwargs = dict(method=args.method, budget=args.budget, ratio=args.ratio, template=args.template,
                  max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                  pc_budget=args.pc_budget, pc_ratio=args.pc_ratio)
    if args.json:
        g = engine.generate(_read(args.file), **kwargs)
        print(json.dumps({"text": g.text, "stats": g.stats.to_dict()}))
        return 0
    for piece in engine.stream(_read(args.file), **kwargs):
        print(piece, end="", flush=True)
    print()
    return 0


def _cmd_models(args) -> int:
    from .models import cache_dir, pull

    if args.action == "list":
        for name, m in BUILTIN_MODELS.items():
            print(f"{name:24s} {m.summary}")
        print(f"cache: {cache_dir()}  (set DRAFT_RAG_CACHE to move it)")
        return 0
    for name in args.names or [DEFAULT_MODEL]:
        print(pull(name))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .engine import METHODS

    parser = argparse.ArgumentParser(prog="draft-rag", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compress", help="SpecPC: compress a prompt with the draft, print the text")
    p.add_argument("file", nargs="?", default="-", help="text file, or - for stdin")
    p.add_argument("--draft", default=DEFAULT_MODEL, help="draft model (alias, path, .gguf, hub id)")
    add_budget_args(p, required=True)
    p.add_argument("--question", help="protected question appended after the text; steers the draft")
    p.add_argument("--json", action="store_true", help="print text, token counts, kept spans, seconds as JSON")
    p.add_argument("--html", metavar="OUT.html", help="also write a page showing what was kept")
    add_specpc_args(p)
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser("generate", help="answer a prompt with the target, optionally compressed")
    p.add_argument("file", nargs="?", default="-", help="prompt file, or - for stdin")
    p.add_argument("--target", default=DEFAULT_MODEL)
    p.add_argument("--draft", default=None, help="draft model (default: the target itself)")
    p.add_argument("--method", default="specpc", choices=METHODS)
    add_budget_args(p, kv=True)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pc-budget", type=int, help="speckv-pc: SpecPC's prompt budget in tokens (default 2048)")
    g.add_argument("--pc-ratio", type=float, help="speckv-pc: SpecPC's prompt budget as a fraction")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int)
    p.add_argument("--template", choices=("chat", "raw"), help="default: chat when the target has a template")
    p.add_argument("--json", action="store_true", help="print text plus stats as JSON")
    add_specpc_args(p)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("models", help="list or install the built-in models")
    p.add_argument("action", choices=("list", "pull"))
    p.add_argument("names", nargs="*", help=f"built-in model names (default {DEFAULT_MODEL})")
    p.set_defaults(func=_cmd_models)

    for add in _extra_subcommands():
        add(sub)
    return parser


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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
