"""The bench's task registry: RULER's 13 tasks (``ruler.py``) and the first RULER-style tasks with a retrieval-QA
task (``legacy.py``), kept for the chunk and overhead benchmarks; all generated at a chosen token length with a seed.

Each generator returns RULER-format records (``input``, ``outputs``, ``answer_prefix``, ``length``,
``index``, ``tokens_to_generate``) sized with the given tokenizer (the draft's, as RULER sizes with the model's).
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import check_int
from .legacy import niah, retrieval_qa
from .ruler import RULER_TASKS

TASKS: dict[str, Callable] = {
    "niah_single": lambda tok, length, n, seed: niah(tok, length, n, seed),
    "niah_multikey": lambda tok, length, n, seed: niah(tok, length, n, seed, keys=4),
    "qa": retrieval_qa,
}
LEGACY_TASKS = tuple(TASKS)  # the first RULER-style generators, kept for the chunk and overhead benchmarks


def generate(task: str, tokenizer, length: int, n: int, seed: int = 42) -> list[dict]:
    """``n`` records of ``task`` (one of ``TASKS``) at about ``length`` tokens of ``tokenizer``."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    check_int("length", length, 1)
    check_int("n", n, 1)
    return TASKS[task](tokenizer, length, n, seed)


RULER_13 = tuple(RULER_TASKS)  # RULER's 13 tasks (ruler.py), in RULER's own format and templates
TASKS.update(RULER_TASKS)
