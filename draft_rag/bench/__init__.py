"""Evaluation and benchmarks: RULER-format data and metric, task generators, runners, reports.

``draft-rag eval`` scores one method on RULER-format JSONL; ``draft-rag bench`` generates tasks and runs a
grid of methods x budgets per draft -> target pair (see ``cli.py``).
"""

from .data import Record, load_jsonl, score_all, split_input, string_match_all
from .runner import EvalResult, all_methods, evaluate

__all__ = [
    "EvalResult",
    "Record",
    "all_methods",
    "evaluate",
    "load_jsonl",
    "score_all",
    "split_input",
    "string_match_all",
]
