"""RULER-format records: loading, validation, prompt layout and the string-match-all metric."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Record:
    """One RULER record. ``extra`` keeps every other field of the JSON line untouched."""

    input: str
    outputs: tuple[str, ...]
    answer_prefix: str = ""
    index: object = None
    max_new_tokens: int | None = None  # RULER's per-task ``tokens_to_generate`` when present
    extra: tuple = ()

    def to_dict(self) -> dict:
        out = dict(self.extra)
        out.update(input=self.input, outputs=list(self.outputs), answer_prefix=self.answer_prefix, index=self.index)
        if self.max_new_tokens is not None:
            out["tokens_to_generate"] = self.max_new_tokens
        return out


def parse_record(obj, where: str = "record") -> Record:
    """Validate one JSON object as a RULER record; errors name the field and what was expected."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if not isinstance(obj.get("input"), str) or not obj["input"].strip():
        raise ValueError(f"{where}: 'input' must be a non-empty string")
    outputs = obj.get("outputs")
    if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) and o for o in outputs):
        raise ValueError(f"{where}: 'outputs' must be a non-empty list of non-empty strings")
    prefix = obj.get("answer_prefix") or ""
    if not isinstance(prefix, str):
        raise ValueError(f"{where}: 'answer_prefix' must be a string when present")
    tokens = obj.get("tokens_to_generate")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
        raise ValueError(f"{where}: 'tokens_to_generate' must be a positive integer when present")
    known = {"input", "outputs", "answer_prefix", "index", "tokens_to_generate"}
    extra = tuple((k, v) for k, v in obj.items() if k not in known)
    return Record(obj["input"], tuple(outputs), prefix, obj.get("index"), tokens, extra)


def follow_ups(rec: Record) -> list[Record]:
    """The record's follow-up questions (its ``follow_ups`` field: question, answer_prefix, outputs) as records
    over the same input with the last line, the question, replaced; none when it has no such field."""
    items = dict(rec.extra).get("follow_ups") or []
    head = rec.input.rstrip("\n").rpartition("\n")[0]
    if items and not head:
        raise ValueError(f"record {rec.index!r}: follow-up questions need an input whose last line is the question")
    out = []
    for i, item in enumerate(items):
        where = f"record {rec.index!r} follow_ups[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not item["question"].strip():
            raise ValueError(f"{where}: expected an object with a non-empty 'question'")
        fields = {"input": f"{head}\n{item['question']}", "index": rec.index, "tokens_to_generate": rec.max_new_tokens}
        out.append(parse_record({**item, **fields}, where))
    return out


def load_jsonl(path, limit: int | None = None) -> list[Record]:
    """Read RULER-format JSONL (``input``, ``outputs``, optional ``answer_prefix``); first ``limit`` records."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data file not found: {path}")
    records = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
            records.append(parse_record(obj, f"{path}:{line_no}"))
            if limit is not None and len(records) >= limit:
                break
    if not records:
        raise ValueError(f"{path}: no records found")
    return records


def write_jsonl(records, path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_dict() if isinstance(r, Record) else r, ensure_ascii=False) + "\n")


def string_match_all(prediction: str, outputs) -> float:
    """RULER's per-record score: the fraction of ``outputs`` found (case-insensitive) in the prediction."""
    pred = prediction.lower()
    return sum(o.lower() in pred for o in outputs) / len(outputs)


def string_match_part(prediction: str, outputs) -> float:
    """RULER's qa score: 1 if any of ``outputs`` is found (case-insensitive) in the prediction, else 0."""
    pred = prediction.lower()
    return float(any(o.lower() in pred for o in outputs))


METRICS = {"all": string_match_all, "part": string_match_part}


def task_metric(task: str) -> str:
    """RULER's metric for a task: string-match-part for qa_1/qa_2, string-match-all for the rest."""
    return "part" if task.startswith("qa") else "all"


def score_all(predictions, records) -> float:
    """Mean string-match-all over records, on 0-100."""
    if len(predictions) != len(records) or not records:
        raise ValueError("predictions and records must be non-empty and of equal length")
    return 100.0 * sum(string_match_all(p, r.outputs) for p, r in zip(predictions, records)) / len(records)


def split_input(text: str) -> tuple[str, str, str]:
    """``(instruction, context, question)`` of a RULER input: its first and last lines around the body.

    RULER prompts open with a one-line task instruction and close with a one-line question. Both are
    passed to the engine as protected segments so no compressor may drop them; a line longer than a
    quarter of the input (and over 400 characters) is treated as context instead.
    """
    body = text.strip("\n")
    first, _, rest = body.partition("\n")
    head, _, last = rest.rpartition("\n")
    limit = max(len(body) / 4, 400)
    instruction = first.strip() if rest and len(first) <= limit else ""
    context = rest if instruction else body
    question = ""
    if instruction and head and len(last) <= limit and last.strip():
        question, context = last.strip(), head
    elif not instruction:
        head, _, last = body.rpartition("\n")
        if head and len(last) <= limit and last.strip():
            question, context = last.strip(), head
    return instruction, context.strip("\n"), question


def chunked(context: str, tokenizer, tokens: int) -> list[str]:
    """``context`` cut at sentence and line ends into chunks of about ``tokens`` tokens each (a retriever's chunks;
    a sentence longer than that is one chunk), which together are the context."""
    from ..prompt import count_tokens
    from ..units import split_units

    chunks, start, size = [], 0, 0
    for unit in split_units(context, "sentence"):
        size += count_tokens(tokenizer, context[unit.start : unit.end])
        if size >= tokens:
            chunks.append(context[start : unit.end])
            start, size = unit.end, 0
    tail = context[start:]
    if tail.strip() or not chunks:
        chunks.append(tail)
    else:
        chunks[-1] += tail
    return chunks
