"""budget="adaptive": SpecPC keeps as many tokens as the draft's attention needs, within a floor and ceiling."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import needle_prompt, tiny_model

from draft_rag import DraftEngine, SpecPCConfig
from draft_rag.cli import main
from draft_rag.specpc import adaptive_budget

CFG = SpecPCConfig(starting_layer_index=0, window_size=8, kernel_size=8, neighbor_tokens=8, granularity="token")


def test_the_fewest_tokens_that_reach_the_coverage():
    pooled = np.array([0.0, 5.0, 1.0, 3.0, 1.0, 0.0])  # selectable: all but the first (protected)
    selectable = np.array([False, True, True, True, True, True])
    budget = lambda **kw: adaptive_budget(pooled, selectable, 1, SpecPCConfig(**kw))  # noqa: E731
    assert budget(coverage=0.5) == 1 + 1  # 5 of 10
    assert budget(coverage=0.8) == 1 + 2  # 8 of 10
    assert budget(coverage=0.85) == 1 + 3
    assert budget(coverage=1.0) == 1 + 4  # a zero score adds nothing
    assert budget(coverage=0.5, floor=4) == 4 and budget(coverage=1.0, ceiling=3) == 3
    assert adaptive_budget(np.zeros(3), np.array([True] * 3), 0, SpecPCConfig(coverage=0.5)) == 3  # no signal: all


def test_engine_keeps_more_for_a_higher_coverage_within_floor_and_ceiling():
    text, question, _ = needle_prompt(60)

    def kept(**settings) -> int:
        engine = DraftEngine(draft=tiny_model("llama"), specpc=CFG.replace(**settings))
        return engine.compress(text, question=question).draft_kept_tokens

    default = DraftEngine(draft=tiny_model("llama"), specpc=CFG).compress(text, question=question, budget="adaptive")
    assert kept(coverage=0.3) < default.draft_kept_tokens < kept(coverage=0.99) < default.draft_original_tokens
    assert question in default.text  # protected text is kept whatever the coverage
    assert kept(coverage=0.99, ceiling=150) == 150 and kept(coverage=0.05, floor=200) == 200


def test_adaptive_generation_stays_within_the_targets_window():
    text, question, _ = needle_prompt(60)
    engine = DraftEngine(tiny_model("llama"), specpc=CFG)
    gen = engine.generate(text, question=question, method="specpc", budget="adaptive", max_new_tokens=3)
    assert 0 < gen.stats.prompt_tokens < gen.stats.original_tokens
    messages = [{"role": "user", "content": f"Documents:\n{text}\n\nQuestion: {question}"}]
    chat = engine.generate(messages=messages, method="specpc", budget="adaptive", max_new_tokens=3)
    assert chat.stats.prompt_tokens < chat.stats.original_tokens
    with pytest.raises(ValueError, match="budget='adaptive'.*method='specpc'"):
        engine.generate(text, method="speckv", budget="adaptive")


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(coverage=0.9, budget=100), "not both"),
        (dict(coverage=0.9, ratio=0.5), "not both"),
        (dict(coverage=0), "coverage"),
        (dict(coverage=1.5), "coverage"),
        (dict(coverage=0.9, floor=0), "floor"),
        (dict(coverage=0.9, floor=10, ceiling=5), "must not exceed"),
    ],
)
def test_bad_adaptive_settings_name_the_argument(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SpecPCConfig(**kwargs)


def test_a_fixed_budget_replaces_an_adaptive_one():
    cfg = SpecPCConfig(coverage=0.9)
    assert cfg.replace(budget=100).coverage is None and cfg.replace(ratio=0.5).coverage is None
    assert SpecPCConfig(budget=100).replace(coverage=0.5).budget is None


def test_cli_budget_adaptive(tiny_dir, tmp_path, capsys):
    text, _, _ = needle_prompt(40)
    f = tmp_path / "p.txt"
    f.write_text(text)
    argv = ["compress", "--draft", tiny_dir, "--question", "Why?", "--json", "--starting-layer-index", "0"]
    kept = {}
    for coverage in ("0.3", "0.95"):
        assert main(argv + ["--budget", "adaptive", "--coverage", coverage, str(f)]) == 0
        kept[coverage] = json.loads(capsys.readouterr().out)["compressed_tokens"]
    assert kept["0.3"] < kept["0.95"]
    assert main(["generate", "--target", tiny_dir, "--method", "speckv", "--budget", "adaptive", str(f)]) == 2
