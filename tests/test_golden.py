"""Golden outputs: `draft-rag compress/generate` and the engine's calls on fixed inputs, byte for byte.

Recorded before the v0.3 redesign (issue 23) and kept since: a refactor must not change what users get.
Timings are dropped and floats compared to a relative 1e-5; everything else (text, kept spans, token counts, KV
entries) must match exactly.
SpecPC runs at ``granularity="token"`` here (the paper's, and the only one before issue 39): the file predates
the unit granularities, which tests/test_units.py covers.
The test never writes the file: for an intended change, ``python scripts/regold.py`` rewrites it (review the diff).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
from conftest import needle_prompt, tiny_model

from draft_rag import DraftEngine, SpecKVConfig, SpecPCConfig
from draft_rag.cli import main

GOLDEN = Path(__file__).parent / "data" / "golden.json"
TINY = ["--starting-layer-index", "0", "--window-size", "8", "--granularity", "token"]  # the paper's SpecPC
METHODS = ["full", "specpc", "speckv", "speckv-pc", "snapkv", "streamingllm", "random"]


def _timeless(value):
    """``value`` without its timings (the only part of an output that may differ between runs)."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def _same(got, want) -> bool:
    """Equal, floats within a relative 1e-5 (draft scores move at the 1e-7 level when the context cache splits a
    draft pass in two; what is kept does not)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_same, got, want))
    if isinstance(want, float) and isinstance(got, float):
        return math.isclose(got, want, rel_tol=1e-5)
    return got == want


def _cli(argv) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return _timeless(json.loads(out.getvalue()))


def _cli_outputs(tiny_dir, prompt_file) -> dict:
    out = {
        "compress budget": _cli(
            ["compress", "--draft", tiny_dir, "--budget", "80", "--question", "Why?", "--json"] + TINY + [prompt_file],
        ),
        "compress ratio": _cli(["compress", "--draft", tiny_dir, "--ratio", "0.3", "--json"] + TINY + [prompt_file]),
        "compress auto": _cli(
            ["compress", "--draft", tiny_dir, "--budget", "auto", "--context-window", "120", "--json"]
            + TINY
            + [prompt_file],
        ),
    }
    for method in METHODS:
        budget = {"full": [], "specpc": ["--budget", "60"]}.get(method, ["--budget", "40"])
        pc = ["--pc-budget", "120"] if method == "speckv-pc" else []
        out[f"generate {method}"] = _cli(
            ["generate", "--target", tiny_dir, "--method", method, "--max-new-tokens", "6", "--json"]
            + budget
            + pc
            + TINY
            + [prompt_file],
        )
    return out


def _stats(gen) -> dict:
    return _timeless({"text": gen.text, "stats": gen.stats.to_dict()})


def _engine_outputs() -> dict:
    specpc = SpecPCConfig(starting_layer_index=0, window_size=8, kernel_size=8, neighbor_tokens=8, granularity="token")
    engine = DraftEngine(tiny_model("llama"), specpc=specpc, speckv=SpecKVConfig(window_size=8))
    text, question, _ = needle_prompt(40)
    chunks = [c for c in text.split(". ") if c]
    cp = engine.compress(chunks=chunks, question=question, instruction="Answer briefly.", ratio=0.4)
    messages = [
        {"role": "system", "content": "Answer from the documents."},
        {"role": "user", "content": f"Documents:\n{text}\n\nQuestion: {question}"},
    ]
    cm = engine.compress_messages(messages, ratio=0.4)
    out = {
        "compress chunks": _timeless(
            {
                "text": cp.text,
                "chunks": [c.__dict__ for c in cp.chunks],
                "spans": cp.kept_spans,
                "tokens": [cp.original_tokens, cp.compressed_tokens],
            }
        ),
        "compress messages": _timeless({"messages": cm.messages, "stats": cm.stats.to_dict()}),
        "score chunks": [round(s, 5) for s in engine.score_chunks(chunks[:6], question=question)],
    }
    for method in METHODS:
        kw = {"budget": 48} if method != "full" else {}
        if method == "speckv-pc":
            kw["pc_ratio"] = 0.5
        out[f"stream prompt {method}"] = _stats(
            engine.generate(text, question=question, method=method, max_new_tokens=5, **kw)
        )
        out[f"stream messages {method}"] = _stats(
            engine.generate(messages=messages, method=method, max_new_tokens=5, **kw)
        )
    return out


@pytest.fixture
def prompt_file(tmp_path):
    return write_prompt(tmp_path / "p.txt")


def golden_outputs(tiny_dir: str, prompt_file: str) -> dict:
    """What the golden file records, from the code as it is (``scripts/regold.py`` writes it)."""
    return json.loads(json.dumps({**_cli_outputs(tiny_dir, prompt_file), **_engine_outputs()}))


def write_prompt(path: Path) -> str:
    path.write_text(needle_prompt(20)[0])
    return str(path)


def test_outputs_match_the_golden_file(tiny_dir, prompt_file):
    got = golden_outputs(tiny_dir, prompt_file)
    want = json.loads(GOLDEN.read_text())
    assert sorted(got) == sorted(want)
    for key in want:
        assert _same(got[key], want[key]), key
