"""Smoke tests: each script behind a committed figure runs end to end on a tiny model, as a process with one torch
thread, and its output has the fields and table the docs quote (figures on a tiny random model mean nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, cwd: Path) -> str:
    """``python scripts/NAME ARGS`` in ``cwd``; its stdout, or a failure that shows its stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "scripts" / name), *args]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{' '.join(cmd)} exited {out.returncode}:\n{out.stderr[-4000:]}"
    return out.stdout


def test_long_context(deep_dir, tmp_path):
    out = run_script("long_context.py", "--lengths", "300", "--depths", "0.5", "--budget", "64", "--draft", deep_dir,
                     "--json", "lc.json", cwd=tmp_path)  # fmt: skip
    rows = json.loads((tmp_path / "lc.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["kept"] <= 64 < rows[0]["draft_tokens"] and rows[0]["blocks"] == 1
    assert "| prompt tokens | blocks |" in out and "50%:" in out


@pytest.mark.parametrize("method", ["specpc", "speckv"])
def test_context_cache(deep_dir, tmp_path, method):
    out = run_script("context_cache.py", "--lengths", "300", "--repeats", "1", "--budget", "64", "--draft", deep_dir,
                     "--method", method, "--json", "cc.json", cwd=tmp_path)  # fmt: skip
    run = json.loads((tmp_path / "cc.json").read_text())["runs"][0]
    assert run["same_as_cold"] is True and run["cached_tokens"] > 0.5 * run["draft_tokens"]  # the context
    assert out.rstrip().endswith("| yes |")


def test_payoff(deep_dir, tmp_path):
    out = run_script("payoff.py", "--pairs", f"{deep_dir}:{deep_dir}", "--lengths", "256", "--kept", "0.5",
                     "--out", "po", cwd=tmp_path)  # fmt: skip
    rows = json.loads((tmp_path / "po.json").read_text())
    assert (
        len(rows) == 1 and rows[0]["whole_s"] > 0 and rows[0]["pays"] == (rows[0]["compressed_s"] < rows[0]["whole_s"])
    )
    assert (tmp_path / "po.txt").read_text().splitlines()[-1] in out and "| 256 | 50% |" in out


def test_adaptive_coverage(deep_dir, tmp_path):
    args = ["--length", "600", "--n", "1", "--tasks", "niah_single_1", "--coverages", "0.9", "--ratios", "0.5"]
    out = run_script("adaptive_coverage.py", *args, "--draft", deep_dir, "--json", "ac.json", cwd=tmp_path)
    rows = json.loads((tmp_path / "ac.json").read_text())["rows"]
    assert len(rows) == 2 and all(0 < r["kept_tokens"] < r["input_tokens"] for r in rows)
    assert out.count("\n| ") == 3  # header and one row per setting


def test_capture_overhead(deep_dir, tmp_path):
    out = run_script("capture_overhead.py", "--draft", deep_dir, "--lengths", "128", "--repeats", "1", cwd=tmp_path)
    assert len([line for line in out.splitlines() if line.startswith("| 128 |")]) == 1


def test_cost_checks(deep_dir, tmp_path):
    out = run_script("cost_checks.py", "lookahead", "--draft", deep_dir, "--length", "256", "--tokens", "4",
                     "--repeats", "2", cwd=tmp_path)  # fmt: skip
    assert "same tokens: True" in out
    out = run_script(
        "cost_checks.py", "overhead", "--draft", deep_dir, "--lengths", "256", "--repeats", "1", cwd=tmp_path
    )
    assert len([line for line in out.splitlines() if line.startswith("| ")]) == 2  # header and the row


def test_serve_load(deep_dir, tmp_path):
    out = json.loads(run_script("serve_load.py", "--target", deep_dir, "--clients", "2", "--seconds", "3",
                                "--max-tokens", "4", "--filler", "4", cwd=tmp_path))  # fmt: skip
    assert (
        out["answered"] > 0 and out["lost"] == 0 and out["queued_after"] == 0 and out["sigterm_exit_code"] in (0, -15)
    )
    assert out["requests"] == out["answered"] + out["refused_429"] + out["refused_503"] + out["lost"]


def test_chunk_cache_kept(deep_dir, tmp_path):
    from conftest import tiny_tokenizer

    from draft_rag.bench.tasks import generate

    (tmp_path / "b" / "data").mkdir(parents=True)
    records = generate("niah_single", tiny_tokenizer(), 400, 2, 0)
    (tmp_path / "b/data/niah_single_400_tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = run_script("chunk_cache_kept.py", "--folder", "b", "--task", "niah_single", "--draft", deep_dir,
                     "--chunk-tokens", "64", "--ratio", "0.5", "--json", "k.json", cwd=tmp_path)  # fmt: skip
    data = json.loads((tmp_path / "k.json").read_text())
    assert [r["record"] for r in data["rows"]] == [0, 1] and set(data["counts"]) == {"exact", "chunk_cache"}
    assert data["counts"]["exact"] == sum(bool(r["exact"]) for r in data["rows"])
    assert out.startswith("| record | gold |") and "records keeping at least one gold answer: exact" in out
