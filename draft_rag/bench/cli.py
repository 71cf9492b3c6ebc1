"""``draft-rag eval`` (one method on RULER-format JSONL) and ``draft-rag bench`` (generated tasks x grid)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..builtins import DEFAULT_MODEL
from ..cli_args import InputError, add_options, fraction, non_negative, option, positive_int
from ..config import DEFAULT_COVERAGE
from ..methods import bench_get
from ..units import DEFAULT_GRANULARITY, GRANULARITIES
from .chunks import RANKERS
from .runner import all_methods
from .tasks import TASKS

logger = logging.getLogger("draft_rag.bench")


def _threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _cmd_eval(args) -> int:
    from ..engine import DraftEngine
    from .data import load_jsonl
    from .runner import check_method, evaluate

    check_method(args.method)
    _threads(args)
    _check_eval_budget(args)
    records = load_jsonl(args.data, args.limit)
    engine = DraftEngine(target=args.target, draft=args.draft or args.target)
    lingua = None
    if bench_get(args.method).external:
        from .llmlingua import LLMLinguaClient, LLMLinguaUnavailable

        try:
            lingua = LLMLinguaClient(args.draft or args.target, engine.draft.tokenizer)
        except LLMLinguaUnavailable as exc:
            logger.error("method llmlingua cannot run: %s", exc)
            return 3
    try:
        res = evaluate(
            engine,
            records,
            args.method,
            budget=None if args.budget == "adaptive" else args.budget,
            ratio=args.ratio,
            coverage=(args.coverage or DEFAULT_COVERAGE) if args.budget == "adaptive" else None,
            template=args.template,
            max_new_tokens=args.max_new_tokens,
            llmlingua=lingua,
            metric=args.metric,
        )
    finally:
        if lingua is not None:
            lingua.close()
    summary = res.to_dict()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res.to_dict(with_records=True), indent=1))
        logger.info("wrote %s", args.json)
    print(json.dumps(summary))
    return 0


def _check_eval_budget(args) -> None:
    """``eval``'s budget flags: one of ``--budget`` / ``--ratio`` (both only for speckv-pc, whose ``--ratio`` is
    SpecPC's), ``--budget adaptive`` and ``--coverage`` for specpc alone; a flag that would be ignored is an error."""
    m = bench_get(args.method)
    if not m.reference and args.budget is None and args.ratio is None:
        raise InputError(f"--method {args.method} needs --budget N or --ratio R")
    if args.budget is not None and args.ratio is not None and not (m.shortens_prompt and m.evicts_kv):
        raise InputError(
            f"give --budget or --ratio, not both (only speckv-pc takes both: --budget its KV entries, --ratio its "
            f"prompt ratio), got --method {args.method}"
        )
    if args.budget == "adaptive" and not m.adaptive:
        raise InputError(f"--budget adaptive is for --method specpc, got {args.method}")
    if args.coverage is not None and args.budget != "adaptive":
        raise InputError("--coverage sets the adaptive budget: give it with --budget adaptive (or drop it)")


def _cmd_bench(args) -> int:
    from .grid import parse_pair, save_results
    from .report import write_report

    pairs = [parse_pair(p) for p in (args.pair or [args.pair_default])]
    out = Path(args.out)
    _threads(args)
    data = _grid(args, pairs, out)
    if args.chunk_queries:
        data["chunks"] = _chunk_rows(args, pairs[0])
        save_results(data, out / "results.json")
    if args.overhead:
        data["overhead"] = _overhead_rows(args, pairs[0])
        save_results(data, out / "results.json")
    paths = write_report(data, out)
    print(paths["markdown"].read_text())
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values() if p.exists()))
    return 0


def _grid(args, pairs, out: Path) -> dict:
    """The grid's results: merged from other runs first (``--merge``), then every cell of ``--tasks`` run."""
    from .grid import load_results, merge_results, run_grid, save_results, upgrade_cells
    from .tasks import RULER_13

    if args.merge:
        merge_results(out / "results.json", args.merge)
    tasks = args.tasks
    if tasks is None:  # not given: RULER's 13, or none when only merging
        tasks = [] if args.merge else list(RULER_13)
    if args.merge and upgrade_cells(merged := load_results(out / "results.json"), out):
        save_results(merged, out / "results.json")
    if not tasks:
        return load_results(out / "results.json")
    return run_grid(
        pairs,
        tasks,
        args.lengths,
        args.n,
        args.methods or list(all_methods()),
        ratios=args.ratios,
        kv_budgets=args.kv_budgets,
        seed=args.seed,
        out_dir=out,
        max_new_tokens=args.max_new_tokens,
        fresh=args.fresh,
        block_size=args.block_size,
        coverages=args.coverages,
        sparse_prefill=args.sparse_prefill,
        follow_ups=args.follow_ups,
        granularity=args.granularity,
        chunk_tokens=args.chunk_tokens,
        chunk_cache_mb=args.chunk_cache_mb,
    )


def _chunk_rows(args, pair) -> list[dict]:
    """The chunk-pruning benchmark's rows on ``--chunk-queries`` retrieval-QA queries (``pair``'s draft)."""
    from ..engine import DraftEngine
    from .chunks import make_queries, run_chunk_bench

    engine = DraftEngine(target=pair.target, draft=pair.draft)
    rankers = [r for r in RANKERS if r in args.rankers]
    lingua = None
    if "llmlingua" in rankers:
        from .llmlingua import LLMLinguaClient

        lingua = LLMLinguaClient(pair.draft, engine.draft.tokenizer)
    try:
        rows = run_chunk_bench(
            engine, make_queries(args.chunk_queries, args.chunks_per_query, args.seed), rankers, llmlingua=lingua
        )
    finally:
        if lingua is not None:
            lingua.close()
    for r in rows:
        r.update(pair=pair.name, k=args.chunks_per_query, seed=args.seed)
    return rows


def _overhead_rows(args, pair) -> list[dict]:
    """SpecPC's draft pass against a plain draft forward, per length, on ``--overhead`` needle records."""
    from ..engine import DraftEngine
    from .data import parse_record
    from .runner import draft_overhead
    from .tasks import generate

    engine = DraftEngine(target=pair.target, draft=pair.draft)
    rows = []
    for length in args.lengths:
        raw = generate("niah_single", engine.draft.tokenizer, length, args.overhead, args.seed)
        row = draft_overhead(engine, [parse_record(r) for r in raw])
        row.update(pair=pair.name, length=length)
        logger.info("SpecPC draft overhead at %d tokens: %.1f%%", length, row["overhead_pct"])
        rows.append(row)
    return rows


def _eval_budget(text: str) -> int | str:
    """``eval --budget``: a number of tokens or ``adaptive``."""
    if text == "adaptive":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens >= 1 or 'adaptive', got {text!r}") from None


METHODS = all_methods()
THREADS = option(
    "--threads", type=positive_int, default=argparse.SUPPRESS, help="torch CPU threads (1 is fastest on a busy machine)"
)
EVAL_OPTIONS = (
    option("--data", required=True, help="RULER-format JSONL: input, outputs, answer_prefix"),
    option("--limit", type=positive_int, help="first N records"),
    option("--method", required=True, choices=METHODS),
    option(
        "--budget",
        type=_eval_budget,
        help="prompt tokens kept (draft tokenizer) for specpc/llmlingua; KV entries for KV methods and speckv-pc; "
        "'adaptive' (specpc): as many as the draft's attention needs (--coverage)",
    ),
    option(
        "--coverage",
        type=fraction,
        help="with --budget adaptive: the share of the context's draft attention kept (default 0.9)",
    ),
    option(
        "--ratio",
        type=fraction,
        help="fraction of the compressible context kept, in (0, 1] (speckv-pc: its prompt ratio, beside --budget)",
    ),
    option("--target", default=DEFAULT_MODEL),
    option("--draft", default=None, help="draft model (default: the target)"),
    option("--max-new-tokens", type=positive_int, help="default: the record's tokens_to_generate, else 48"),
    option("--template", choices=("chat", "raw"), help="default: chat when the target has a template"),
    option(
        "--metric",
        choices=("all", "part"),
        default="all",
        help="string-match-all (RULER's for every task but qa) or string-match-part (qa_1/qa_2); both are reported",
    ),
    option("--json", metavar="OUT", help="also write the summary plus every prediction to OUT"),
    THREADS,
)
BENCH_OPTIONS = (
    option(
        "--pair",
        action="append",
        default=None,
        metavar="[NAME=]DRAFT:TARGET",
        help="draft:target pair (repeatable); default SmolLM2 -> SmolLM2",
    ),
    option(
        "--tasks",
        nargs="*",
        choices=list(TASKS),
        help="tasks to generate (default: RULER's 13, none with --merge; none: only report / chunk bench)",
    ),
    option(
        "--lengths",
        nargs="+",
        type=positive_int,
        default=[4096],
        help="task lengths in draft tokens, answer included as RULER counts (e.g. 4096 8192 16384)",
    ),
    option("--n", type=positive_int, default=4, help="records per task and length"),
    option("--seed", type=int, default=42),
    option("--methods", nargs="+", choices=METHODS, help=f"default: all ({', '.join(METHODS)})"),
    option("--ratios", nargs="+", type=fraction, default=[0.25, 0.5], help="prompt-compression budgets"),
    option("--kv-budgets", nargs="+", type=positive_int, default=[128, 256], help="KV-entry budgets"),
    option(
        "--coverages",
        nargs="+",
        type=fraction,
        default=[],
        help="also run specpc with budget='adaptive' at each coverage (share of the draft's attention to keep)",
    ),
    option("--max-new-tokens", type=positive_int, help="default: each task's tokens_to_generate"),
    option(
        "--chunk-queries",
        type=int,
        default=0,
        metavar="N",
        help="also run the chunk-pruning benchmark on N retrieval-QA queries (first pair)",
    ),
    option("--chunks-per-query", type=positive_int, default=8),
    option(
        "--rankers",
        nargs="+",
        default=list(RANKERS),
        choices=list(RANKERS),
    ),
    option(
        "--overhead",
        type=int,
        default=0,
        metavar="N",
        help="also time SpecPC's draft pass against a plain draft forward on N needle records per length",
    ),
    option("--out", default="bench-out", help="folder for results.json, results.md, results.png, data/"),
    option("--fresh", action="store_true", help="recompute every cell instead of reusing results.json"),
    option(
        "--block-size",
        type=positive_int,
        help="draft tokens per SpecPC scoring pass (default 2048; the draft's window: one pass), recorded per cell",
    ),
    option(
        "--granularity",
        choices=GRANULARITIES,
        default=DEFAULT_GRANULARITY,
        help=f"SpecPC keeps whole units of this kind (default {DEFAULT_GRANULARITY}); cells other than 'token' "
        "record it",
    ),
    option(
        "--chunk-tokens",
        type=positive_int,
        help="give each record's context as chunks of about N draft tokens (cut at sentence ends), recorded per cell",
    ),
    option(
        "--chunk-cache-mb",
        type=non_negative,
        default=0,
        help="with --chunk-tokens: SpecPC cells read the chunks through the draft's chunk cache of this many MiB, "
        "filled cold per record before its question (cells '+chunk cache'); 0: the exact pass",
    ),
    option(
        "--sparse-prefill",
        action="store_true",
        help="also run full, speckv and speckv-pc with the target's vertical-slash sparse prefill (cells '+sparse')",
    ),
    option(
        "--follow-ups",
        action="store_true",
        help="on tasks whose haystacks hide several keys (niah_multikey_1, niah_multiquery), also ask each key on "
        "its own after the first question, over the same context (the draft's context cache serves them)",
    ),
    option(
        "--merge",
        nargs="+",
        metavar="RESULTS.json",
        help="first copy the cells (and chunk rows) of other bench runs into --out's results.json",
    ),
    THREADS,
)


def add_subcommand(sub) -> None:
    """Add ``eval``, ``bench`` and ``cost`` to the main ``draft-rag`` parser."""
    from .cost.cli import add_parser as add_cost_parser

    p = sub.add_parser("eval", help="score one method on RULER-format JSONL (RULER's metrics, 0-100)")
    add_options(p, EVAL_OPTIONS)
    p.set_defaults(func=_cmd_eval)
    p = sub.add_parser("bench", help="generate RULER's tasks, run methods x budgets, write table + plot + JSON")
    add_options(p, BENCH_OPTIONS)
    p.set_defaults(func=_cmd_bench, pair_default=f"{DEFAULT_MODEL}:{DEFAULT_MODEL}")
    add_cost_parser(sub)
