"""Which gold answers SpecPC's kept text holds: the exact pass against the chunk cache, on committed bench records.

Reads one task's records from a bench folder (``FOLDER/data/TASK_*.jsonl``), cuts each context into chunks as
``draft-rag bench --chunk-tokens`` does, and compresses it twice at the same ratio: with the exact pass, and with
the chunk cache emptied and warmed per record (as the bench's '+chunk cache' cells). Prints a row per record and
the counts; ``--json`` keeps them.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/chunk_cache_kept.py --task qa_2 \\
        --json docs/bench/chunk_cache/kept_qa_2.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from draft_rag import DraftEngine, load_model
from draft_rag.bench.data import load_jsonl, split_input
from draft_rag.bench.runner import record_chunks
from draft_rag.builtins import DEFAULT_MODEL


def kept(engine: DraftEngine, rec, chunk_tokens: int, ratio: float, warm: bool) -> str:
    """SpecPC's kept text for one record's context as chunks (``warm``: read into the chunk cache first)."""
    instruction, context, question = split_input(rec.input)
    if warm:
        engine.chunk_cache.clear()
    chunks, _ = record_chunks(engine, context, instruction, None, chunk_tokens, warm)
    return engine.compress(chunks=chunks, instruction=instruction or None, question=question or None,
                           answer_prefix=rec.answer_prefix or None, ratio=ratio).text  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=Path("docs/bench/chunk_cache"), help="a bench --out folder")
    p.add_argument("--task", required=True, help="the task whose data/TASK_*.jsonl records are read")
    p.add_argument("--draft", default=DEFAULT_MODEL)
    p.add_argument("--chunk-tokens", type=int, default=256)
    p.add_argument("--ratio", type=float, default=0.25)
    p.add_argument("--chunk-cache-mb", type=float, default=512)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    files = sorted((args.folder / "data").glob(f"{args.task}_[0-9]*.jsonl"))
    if len(files) != 1:
        p.error(f"--task {args.task}: expected one {args.folder}/data/{args.task}_*.jsonl, found {len(files)}")
    draft = load_model(args.draft)
    exact = DraftEngine(draft=draft, context_cache_mb=0)
    cached = DraftEngine(draft=draft, context_cache_mb=0, chunk_cache_mb=args.chunk_cache_mb)
    rows = []
    print("| record | gold | exact pass keeps it | chunk cache keeps it |\n|---|---|---|---|")
    for i, rec in enumerate(load_jsonl(files[0])):
        texts = [kept(e, rec, args.chunk_tokens, args.ratio, e is cached).lower() for e in (exact, cached)]
        found = [[o for o in rec.outputs if o.lower() in t] for t in texts]
        rows.append({"record": i, "outputs": rec.outputs, "exact": found[0], "chunk_cache": found[1]})
        print(f"| {i} | {', '.join(rec.outputs)} | {len(found[0])} | {len(found[1])} |", flush=True)
    counts = {k: sum(bool(r[k]) for r in rows) for k in ("exact", "chunk_cache")}
    print(f"\nrecords keeping at least one gold answer: exact {counts['exact']}/{len(rows)}, "
          f"chunk cache {counts['chunk_cache']}/{len(rows)} (torch_threads={torch.get_num_threads()})")  # fmt: skip
    if args.json:
        meta = {k: str(v) for k, v in vars(args).items()} | {"torch_threads": torch.get_num_threads()}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows, "counts": counts}, indent=1))


if __name__ == "__main__":
    main()
