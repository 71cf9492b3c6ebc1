"""scripts/gpu_check.py's logic on CPU with tiny models: every step runs, failures and skips become rows."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from draft_rag.bench import cost

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def test_every_step_on_cpu(gpu_check, deep_dir, tmp_path, monkeypatch):
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rope_theta=10000.0, tie_word_embeddings=True)  # fmt: skip
    monkeypatch.setitem(cost.SHAPES, "tiny", shape)
    out = tmp_path / "check.md"
    text = gpu_check.main(
        ["--device", "cpu", "--dtype", "float32", "--draft", deep_dir, "--needle-tokens", "300", "--shape", "tiny",
         "--lengths", "700", "--pair", f"{deep_dir}:{deep_dir}", "--tasks", "niah_single_1", "--pair-length", "400",
         "--n", "1", "--sparse-min-tokens", "128", "--out", str(out)]
    )  # fmt: skip
    assert out.read_text() == text and text.startswith("# GPU check: CPU, float32")
    rows = [line for line in text.splitlines() if line.startswith("| methods |")]
    assert len(rows) == len(gpu_check.METHOD_BUDGETS) + len(gpu_check.SPARSE_METHODS) + 1  # + flash skipped
    assert "| methods | flash_attention_2 | skipped | 0.0 | skipped: flash-attn is not installed |" in text
    assert all("| ok |" in r for r in rows if "flash" not in r)
    assert "sdpa full +sparse | ok" in text and "sparse layers 9" in text  # the sparse kernel ran in every layer
    assert "Sparse prefill blocks: torch SDPA, one call per query block." in text  # CPU: no varlen kernel
    assert "| device_map | auto | ok |" in text and "| cost | tiny 700 | ok |" in text
    assert "| tiny | 695 | full +sparse |" in text and "attention share (dense)" in text  # the cost tables
    assert f"**{Path(deep_dir).name}->{Path(deep_dir).name}**, 400 tokens" in text  # the pair's RULER summary
    numbers = {r["case"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"] if r["step"] == "numbers"}
    assert len(numbers) == 9  # {cpu fp32, cuda fp32, cuda bf16} x {eager, sdpa, flash}
    sdpa = numbers["cpu float32 sdpa"]["numbers"]
    assert 0 < sdpa["capture_vs_own_eager_max_abs"] < 1e-4 and sdpa["kept_overlap_vs_cpu_fp32_eager"] > 0.9
    assert sdpa["sparse_every_key_vs_dense_max_abs"] < 1e-3 and sdpa["sparse_layers"] == 9
    assert numbers["cpu float32 eager"]["numbers"]["capture_vs_own_eager_max_abs"] == 0  # the same kernel
    if not torch.cuda.is_available():
        assert numbers["cuda bfloat16 sdpa"]["note"] == "not run: no CUDA device (torch.cuda.is_available() is False)"
    assert numbers["cpu float32 flash_attention_2"]["note"] == "not run: flash-attention-2 runs only on CUDA"


def test_a_failing_step_is_a_row_not_a_crash(gpu_check, tmp_path):
    text = gpu_check.main(
        ["--device", "cpu", "--dtype", "float32", "--draft", str(tmp_path / "missing"), "--steps", "methods",
         "device_map", "pair", "--attn", "sdpa", "--out", str(tmp_path / "r.md")]
    )  # fmt: skip
    assert "| methods | sdpa load | FAILED |" in text and "| device_map | auto | FAILED |" in text
    assert "| pair | - | skipped |" in text
