"""The built-in model cache: atomic, cross-process conversions; broken entries detected and rebuilt."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import draft_rag.builtins as builtin_models
import draft_rag.models as models
from draft_rag.cli import main

ALIAS = "smollm2-135m-instruct"


@pytest.fixture
def fake_builtin(monkeypatch, tmp_path):
    """A built-in alias whose "conversion" writes a small checkpoint and logs each run to ``conversions.log``."""
    cache, log = tmp_path / "cache", tmp_path / "conversions.log"
    monkeypatch.setenv("DRAFT_RAG_CACHE", str(cache))
    monkeypatch.setattr(builtin_models, "_builtin_gguf", lambda alias: tmp_path / "model.gguf")

    def convert(gguf: Path, out: Path) -> None:
        with open(log, "a") as f:
            f.write("run\n")
        time.sleep(0.2)
        (out / "config.json").write_text('{"model_type": "llama"}')
        save_file({"w": np.arange(64, dtype=np.float32)}, str(out / "model.safetensors"))

    monkeypatch.setattr(builtin_models, "_convert_gguf", convert)
    return cache / "models" / ALIAS, lambda: len(log.read_text().splitlines()) if log.exists() else 0


def _resolve(_):
    return models.resolve(ALIAS)


def test_concurrent_processes_convert_once(fake_builtin):
    folder, runs = fake_builtin
    with multiprocessing.get_context("fork").Pool(3) as pool:
        paths = pool.map(_resolve, range(3))
    assert paths == [str(folder)] * 3 and runs() == 1
    assert builtin_models.cache_problem(folder) is None
    assert not list(folder.parent.glob("*.partial*"))


def test_truncated_weights_are_detected_and_rebuilt(fake_builtin):
    folder, runs = fake_builtin
    models.resolve(ALIAS)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    assert "model.safetensors" in builtin_models.cache_problem(folder)
    (folder / builtin_models.MARKER).unlink()  # as converted by an older version: the safetensors check still sees it
    assert "bytes, its header describes" in builtin_models.cache_problem(folder)
    assert "broken" in builtin_models.builtin_status(ALIAS)
    assert models.resolve(ALIAS) == str(folder) and runs() == 2
    assert builtin_models.cache_problem(folder) is None


def test_corrupt_header_same_size_is_detected(fake_builtin):
    folder, _ = fake_builtin
    models.resolve(ALIAS)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8] = ord("[")
    weights.write_bytes(bytes(data))
    assert builtin_models.cache_problem(folder).startswith("corrupt")


def test_stale_partial_and_unmarked_folders(fake_builtin):
    folder, runs = fake_builtin
    stale = folder.with_name(folder.name + ".partial")
    stale.mkdir(parents=True)
    (stale / "junk.bin").write_text("left by a crash")
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # an interrupted conversion (of an older version)
    assert "no weights" in builtin_models.cache_problem(folder)
    models.resolve(ALIAS)
    assert runs() == 1 and not stale.exists() and not (folder / "junk.bin").exists()
    assert builtin_models.cache_problem(folder) is None


def test_failed_conversion_leaves_nothing(fake_builtin, monkeypatch):
    folder, _ = fake_builtin

    def fail(gguf, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(builtin_models, "_convert_gguf", fail)
    with pytest.raises(RuntimeError, match="conversion failed"):
        models.resolve(ALIAS)
    assert not folder.exists() and not list(folder.parent.glob("*.partial*"))


def test_pull_force_and_list(fake_builtin, capsys):
    folder, runs = fake_builtin
    assert "not converted" in builtin_models.builtin_status(ALIAS)
    assert main(["models", "pull", ALIAS]) == 0 and runs() == 1
    assert main(["models", "pull", ALIAS]) == 0 and runs() == 1
    assert main(["models", "pull", "--force", ALIAS]) == 0 and runs() == 2
    capsys.readouterr()
    assert main(["models", "list", ALIAS]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.split()[:2] == [ALIAS, "installed"]
