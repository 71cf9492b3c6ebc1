"""``draft-rag bench``: generate tasks, run methods x budgets per model pair, keep every cell in one JSON.

Cells already in the results file (same pair, task, length, records, seed, method, budget) are reused,
so a grid can be extended (new methods, budgets, tasks) by running the same command again.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..engine import DraftEngine
from ..methods import bench_get
from ..sparse_prefill import SPARSE_METHODS
from ..units import DEFAULT_GRANULARITY
from .data import METRICS, load_jsonl, parse_record, task_metric, write_jsonl
from .report import CELL_KEYS, label
from .runner import check_method, evaluate, kind
from .tasks import generate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    """A draft -> target pair; ``name`` labels it in tables."""

    name: str
    target: str
    draft: str


def parse_pair(text: str) -> Pair:
    """``DRAFT:TARGET`` or ``NAME=DRAFT:TARGET`` (refs as ``load_model`` takes them)."""
    name, _, refs = text.rpartition("=") if "=" in text else ("", "", text)
    draft, sep, target = refs.partition(":")
    if not sep or not draft or not target:
        raise ValueError(f"--pair must be DRAFT:TARGET or NAME=DRAFT:TARGET, got {text!r}")
    return Pair(name or f"{Path(draft).name}->{Path(target).name}", target, draft)


def budgets_for(method: str, ratios, kv_budgets) -> list[tuple[int | None, float | None]]:
    """(budget, ratio) cells: none for ``full``, ratios for prompt compressors, entries for KV methods.

    ``speckv-pc`` has both: every prompt ratio with every KV budget.
    """
    shortens, evicts = kind(method)
    if shortens and evicts:
        return [(b, r) for r in ratios for b in kv_budgets]
    if shortens:
        return [(None, r) for r in ratios]
    return [(b, None) for b in kv_budgets] if evicts else [(None, None)]


def cells_for(method: str, ratios, kv_budgets, coverages=(), sparse: bool = False) -> list[tuple]:
    """(budget, ratio, coverage, sparse prefill) cells: ``budgets_for``'s, then one adaptive cell per coverage
    for ``specpc``; with ``sparse`` each fixed cell of a ``SPARSE_METHODS`` method once more, sparse."""
    fixed = [(b, r, None, False) for b, r in budgets_for(method, ratios, kv_budgets)]
    sparse_cells = [(b, r, c, True) for b, r, c, _ in fixed] if sparse and method in SPARSE_METHODS else []
    adaptive = [("adaptive", None, c, False) for c in coverages] if bench_get(method).adaptive else []
    return fixed + sparse_cells + adaptive


def units_key(method: str, granularity: str) -> dict:
    """The cell's ``granularity`` entry: SpecPC's units where the method shortens the prompt and they are not
    tokens (what every cell before granularity existed used)."""
    return {"granularity": granularity} if granularity != "token" and kind(method)[0] else {}


def machine() -> str:
    import os

    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    threads = torch.get_num_threads()
    return f"{platform.machine()} {platform.system()}, {dev}, torch {torch.__version__}, {threads} threads"


def _key(cell: dict) -> tuple:
    return tuple(cell.get(k) for k in CELL_KEYS)


def load_results(path: Path) -> dict:
    if path.exists():
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("results"), list):
            return data
        raise ValueError(f"{path} is not a draft-rag bench results file (expected {{'results': [...]}})")
    return {"results": [], "chunks": []}


def save_results(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


LEGACY_SPECKV_PC_KV = 1024  # the KV budget speckv-pc cells ran with before they named one (SpecKVConfig's default)


def data_path(out_dir, task: str, length: int, draft: str) -> Path:
    """Where a grid writes the generated records of one task and length (in the draft's tokenizer)."""
    return Path(out_dir) / "data" / f"{task}_{length}_{Path(draft).name}.jsonl"


def upgrade_cells(data: dict, out_dir) -> int:
    """Bring cells of earlier runs to the current format; returns how many changed.

    Cells without ``metric`` are rescored from their predictions and the records in ``out_dir/data`` under
    both metrics, ``score`` under RULER's for the task (qa: string-match-part). A cell whose records do not
    reproduce its stored string-match-all score is left as it was. ``speckv-pc`` cells without a KV budget
    get the one they ran with (``LEGACY_SPECKV_PC_KV``).
    """
    changed, files = 0, {}  # each records file read once
    for cell in data["results"]:
        if kind(cell["method"]) == (True, True) and cell.get("budget") is None:  # speckv-pc
            cell["budget"], changed = LEGACY_SPECKV_PC_KV, changed + 1
        path = data_path(out_dir, cell["task"], cell["length"], cell.get("draft", ""))
        if "metric" in cell or not cell.get("predictions") or not path.exists():
            continue
        if path not in files:
            files[path] = load_jsonl(path)
        records, preds = files[path][: cell["n"]], cell["predictions"]
        scores = {
            m: 100 * sum(f(p, r.outputs) for p, r in zip(preds, records)) / len(preds) for m, f in METRICS.items()
        }
        if len(records) == len(preds) and abs(scores["all"] - cell["score"]) < 1e-6:
            metric = task_metric(cell["task"])
            cell.update(metric=metric, scores=scores, score=scores[metric])
            changed += 1
        else:
            logger.warning("%s %s %s: records in %s do not match its predictions; not rescored", *_key(cell)[:3], path)
    return changed


def merge_results(path: Path, others) -> dict:
    """Copy cells from other results files into ``path`` (cells already there win); chunk rows and the
    generated records (``data/``) too."""
    data = load_results(path)
    done = {_key(c) for c in data["results"]}
    for other in others:
        if not Path(other).exists():
            raise FileNotFoundError(f"--merge file not found: {other}")
        extra = load_results(Path(other))
        for cell in extra["results"]:
            if _key(cell) not in done:
                data["results"].append(cell)
                done.add(_key(cell))
        for part in ("chunks", "overhead"):
            data[part] = data.get(part) or extra.get(part) or []
        for records in (Path(other).parent / "data").glob("*.jsonl"):  # the records its cells were scored on
            mine = path.parent / "data" / records.name
            if not mine.exists():
                mine.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(records, mine)
    save_results(data, path)
    return data


def run_grid(
    pairs: list[Pair],
    tasks: list[str],
    lengths: list[int],
    n: int,
    methods: list[str],
    *,
    ratios=(0.25, 0.5),
    kv_budgets=(128, 256),
    seed: int = 42,
    out_dir="bench-out",
    max_new_tokens: int | None = None,
    fresh: bool = False,
    progress: bool = True,
    block_size: int | None = None,
    coverages=(),
    sparse_prefill: bool = False,
    follow_ups: bool = False,
    granularity: str = DEFAULT_GRANULARITY,
    chunk_tokens: int | None = None,
    chunk_cache_mb: float = 0,
) -> dict:
    """Run (or reuse) every cell; write ``results.json`` after each one. Returns the results dict.

    ``block_size``: the engine's draft tokens per scoring pass (None: its default); cells record it when given,
    so block-scored and single-pass cells of one grid stand side by side. ``coverages``: adaptive budgets
    (``budget="adaptive"`` at each coverage) run for ``specpc`` beside its fixed ratios; cells record ``coverage``.
    ``sparse_prefill``: full, speckv and speckv-pc cells also run with the target's vertical-slash sparse prefill
    (the paper's settings); those cells record ``sparse_prefill``. ``follow_ups``: where a task's records hold
    follow-up questions (RULER's niah tasks with several keys), each record's are asked after its first question
    over the same context (the draft's context cache serves them); those cells record ``follow_ups`` and their
    results under ``follow_up``. ``granularity``: SpecPC's units (``SpecPCConfig.granularity``); cells of methods
    that shorten the prompt record it unless it is ``"token"`` (cells from before it existed were token-level).
    ``chunk_tokens``: each record's context is cut into chunks of about that many draft tokens (``data.chunked``);
    ``chunk_cache_mb``: SpecPC cells read them through the draft's chunk cache, filled cold per record (cells record
    ``chunk_tokens`` and ``chunk_cache``).
    """
    for m in methods:
        check_method(m)
    out = Path(out_dir)
    path = out / "results.json"
    data = {"results": [], "chunks": []} if fresh else load_results(path)
    done = {_key(c): c for c in data["results"]}
    run = functools.partial(
        _run_cell, max_new_tokens=max_new_tokens, progress=progress, block_size=block_size, granularity=granularity
    )
    chunking = {"chunk_tokens": chunk_tokens} if chunk_tokens else {}
    lingua = _Lingua()
    try:
        for pair in pairs:
            engine = DraftEngine(
                target=pair.target, draft=pair.draft, block_size=block_size, chunk_cache_mb=chunk_cache_mb
            )
            engine.specpc = engine.specpc.replace(granularity=granularity)
            for task in tasks:
                for length in lengths:
                    raw = generate(task, engine.draft.tokenizer, length, n, seed)
                    write_jsonl(raw, data_path(out, task, length, pair.draft))
                    records = [parse_record(r, f"{task}[{i}]") for i, r in enumerate(raw)]
                    asks = follow_ups and any(r.get("follow_ups") for r in raw)
                    for method in methods:
                        for budget, ratio, coverage, sparse in cells_for(
                            method, ratios, kv_budgets, coverages, sparse_prefill
                        ):
                            cell = dict(pair=pair.name, task=task, length=length, n=n, seed=seed, method=method,
                                        budget=budget, ratio=ratio)  # fmt: skip
                            cell.update(_cell_options(method, block_size, coverage, sparse, asks, granularity))
                            cell.update(chunking, **_cache_key(method, chunk_tokens, chunk_cache_mb))
                            if _key(cell) in done:
                                continue
                            run(engine, pair, cell, records, lingua.client(method, pair, engine))
                            data["results"].append(cell)
                            done[_key(cell)] = cell
                            save_results(data, path)
            if pair is not pairs[-1]:
                lingua.close()
    finally:
        lingua.close()
    return data


def _cell_options(method: str, block_size, coverage, sparse: bool, asks: bool, granularity: str) -> dict:
    """The keys a cell records only when set: block size, coverage, sparse prefill, follow-ups, SpecPC's units."""
    return {
        **({"block_size": block_size} if block_size else {}),
        **({"coverage": coverage} if coverage else {}),
        **({"sparse_prefill": True} if sparse else {}),
        **({"follow_ups": True} if asks else {}),
        **units_key(method, granularity),
    }


def _cache_key(method: str, chunk_tokens: int | None, chunk_cache_mb: float) -> dict:
    """The cell's ``chunk_cache`` entry: the draft reads chunks through its chunk cache (SpecPC methods)."""
    return {"chunk_cache": True} if chunk_tokens and chunk_cache_mb and kind(method)[0] else {}


class _Lingua:
    """The LongLLMLingua-2 client, started for the first cell of an external method and closed per pair."""

    def __init__(self):
        self._client = None

    def client(self, method: str, pair: Pair, engine: DraftEngine):
        if bench_get(method).external and self._client is None:
            from .llmlingua import LLMLinguaClient

            self._client = LLMLinguaClient(pair.draft, engine.draft.tokenizer)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _run_cell(engine: DraftEngine, pair: Pair, cell: dict, records, lingua, **kw) -> None:
    """Evaluate one cell's method and budget on ``records``; its results, predictions and provenance into ``cell``."""
    res = evaluate(
        engine,
        records,
        cell["method"],
        budget=cell["budget"],
        ratio=cell["ratio"],
        coverage=cell.get("coverage"),
        max_new_tokens=kw["max_new_tokens"],
        progress=kw["progress"],
        llmlingua=lingua,
        desc=f"{pair.name} {cell['task']}-{cell['length']} {label(cell)}",
        metric=task_metric(cell["task"]),
        sparse_prefill=cell.get("sparse_prefill", False),
        ask_follow_ups=cell.get("follow_ups", False),
        chunk_tokens=cell.get("chunk_tokens"),
        warm_chunks=cell.get("chunk_cache", False),
    )
    cell.update(
        res.to_dict(),
        target=pair.target,
        draft=pair.draft,
        machine=machine(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        predictions=[r["prediction"] for r in res.records],
    )
    logger.info(
        "%s %s-%d %s: score %.1f, kept %.0f/%.0f, %.1f s/record",
        pair.name,
        cell["task"],
        cell["length"],
        label(cell),
        res.score,
        res.avg_kept_tokens,
        res.avg_input_tokens,
        res.seconds["total"],
    )
