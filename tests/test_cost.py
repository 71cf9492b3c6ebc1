"""Cost benchmark harness on a tiny random draft: every field present, medians, per-layer scaling."""

import json

import pytest
import torch
from conftest import tiny_model

from draft_rag import SpecPCConfig
from draft_rag.bench import cost


@pytest.fixture(autouse=True)
def tiny_shape(monkeypatch):
    shape = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    }
    monkeypatch.setitem(cost.SHAPES, "tiny", shape)


def test_scale_is_linear_in_layers():
    assert cost.scale(10.0, 4.0, 2, 6) == pytest.approx(18.0)  # 6 fixed + 2 per layer
    assert cost.scale(10.0, 4.0, 2, 2) == 10.0


def test_cost_rows_have_every_field_and_scaled_figures(tmp_path):
    rows = cost.run_cost(
        tiny_model("llama"),
        ["tiny"],
        [800],
        budgets=[cost.BudgetLevel(0.5, 64)],
        repeats=2,
        new_tokens=3,
        slice_layers=2,
        out=tmp_path,
        specpc=SpecPCConfig(starting_layer_index=1, window_size=8, kernel_size=5),
    )
    assert {(r["method"], str(r["budget"])) for r in rows} == {
        ("full", "None"),
        ("specpc", "0.5"),
        ("speckv", "64"),
        ("speckv-pc", "[0.5, 64]"),
    }
    for r in rows:
        assert r["scaled"] and r["measured_layers"] == 2 and r["repeats"] == 2
        for k in (
            "ttft_s",
            "e2e_s",
            "decode_s_per_token",
            "draft_s",
            "scoring_s",
            "plain_draft_s",
            "prefill_s",
            "peak_bytes",
            "kv_bytes",
            "speedup_e2e",
        ):
            assert r[k] is not None and r[k] >= 0, k
        assert r["e2e_s"] == pytest.approx(r["ttft_s"] + 2 * r["decode_s_per_token"])
        assert r["ttft_s"] == pytest.approx(r["draft_s"] + r["prefill_s"])
    by = {r["method"]: r for r in rows}
    assert by["full"]["draft_s"] == 0 and by["specpc"]["draft_s"] > 0
    # KV scales exactly: 6 layers x 2 KV heads x 8 dims x K+V x fp32 per entry
    assert by["full"]["kv_bytes"] == 6 * 2 * 8 * 2 * 4 * by["full"]["target_tokens"]
    assert by["speckv"]["kv_bytes"] == 6 * 2 * 8 * 2 * 4 * (64 + 1)  # budget + the last prompt token, fed again
    assert by["specpc"]["target_tokens"] < by["full"]["target_tokens"]
    assert (tmp_path / "cost.json").exists()
    assert "specpc@50%" in cost.table(rows) and "(scaled)" in cost.table(rows)
    assert cost.plot(rows, tmp_path / "cost.png").stat().st_size > 0


def test_no_stage_records_autograd(monkeypatch):
    """Every draft and target forward runs without autograd: a graph kept over an 8k prompt took 13 GB."""
    draft = tiny_model("llama")
    grad_on = []
    hook = draft.model.register_forward_pre_hook(lambda *_: grad_on.append(torch.is_grad_enabled()))
    request = cost.prompt(draft.tokenizer, 300)
    budgets = [cost.BudgetLevel(0.5, 32)]
    cfg = SpecPCConfig(starting_layer_index=1, window_size=8, kernel_size=5)
    target = cost.build_target("tiny", draft, 2)
    reader, by_shape = cost.engines(draft, {"tiny": target}, cfg)
    stages = cost.draft_stages(reader, request, budgets, 3)
    target.model.register_forward_pre_hook(lambda *_: grad_on.append(torch.is_grad_enabled()))
    for method, budget, _ in cost.cells_for(budgets):
        cost.target_run(by_shape["tiny"], request, method, budget, stages, 3)
    hook.remove()
    assert grad_on and not any(grad_on)


def test_median_over_repetitions():
    samples = [
        {
            "layers": 6,
            "target_tokens": 10,
            "prefill_s": p,
            "prefill_layers_s": p,
            "decode_s_per_token": 0.0,
            "decode_layers_s_per_token": 0.0,
            "kv_bytes": 0,
            "peak_bytes": 0,
            "draft_s": 1.0,
            "scoring_s": 0.9,
            "plain_draft_s": 1.0,
            "attention_s": p / 4,
        }
        for p in (1.0, 5.0, 2.0)
    ]
    row = cost._row(samples, "tiny", 6, 1)
    assert row["prefill_s"] == 2.0 and row["ttft_s"] == 3.0 and row["attention_share"] == 0.25


def test_layer_clock_times_only_the_decoder_layers():
    model = tiny_model("llama").model
    with cost.LayerClock(model) as clock, torch.no_grad():
        model(torch.tensor([[5, 6, 7]]))
    assert clock.seconds > 0
    assert all(not layer._forward_hooks and not layer._forward_pre_hooks for layer in model.model.layers)


def test_unknown_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="shape must be one of"):
        cost.build_target("gpt-5", tiny_model("llama"))


def test_sparse_prefill_cells_beside_dense_ones(tmp_path):
    from draft_rag import SparsePrefillConfig

    sparse = SparsePrefillConfig(prefill_vertical_size=64, prefill_window_size=64, query_block=64, min_tokens=128)
    assert cost.cells_for([cost.BudgetLevel(0.5, 64)], ["speckv"], sparse=True) == [
        ("full", None, False),
        ("speckv", cost.BudgetLevel(0.5, 64), False),
        ("full", None, True),
        ("speckv", cost.BudgetLevel(0.5, 64), True),
    ]
    rows = cost.run_cost(
        tiny_model("llama"),
        ["tiny"],
        [800],
        budgets=[cost.BudgetLevel(0.5, 64)],
        repeats=1,
        new_tokens=2,
        slice_layers=2,
        out=tmp_path,
        methods=["speckv"],
        sparse=sparse,
    )
    by = {cost._budget_label(r): r for r in rows}
    assert set(by) == {"full", "full +sparse", "speckv@64", "speckv@64 +sparse"}
    assert by["full +sparse"]["sparse_layers"] == 2 and by["full"]["sparse_layers"] == 0
    assert by["full"]["plain_draft_s"] is None  # a plain draft forward is timed for specpc only
    assert 0 < by["full"]["attention_share"] < 1 and by["full +sparse"]["attention_share"] is None
    assert by["full +sparse"]["speedup_e2e"] == by["full"]["e2e_s"] / by["full +sparse"]["e2e_s"]  # vs dense full
    assert by["speckv@64 +sparse"]["kv_bytes"] == by["speckv@64"]["kv_bytes"]
    assert "| full +sparse |" in cost.table(rows)
    md = cost.sparse_table(rows)
    assert "| tiny (scaled) |" in md and "speckv@64 e2e dense / +sparse" in md
    assert cost.sparse_table([r for r in rows if not r["sparse_prefill"]]) == ""


def test_cells_past_the_drafts_window_run_and_say_so(tmp_path):
    """SpecKV's lookahead over a prompt longer than the draft's window: the engine refuses it to users, the cost
    bench's reader runs it as a stand-in for a longer-window draft and marks the row."""
    from conftest import tiny_config, tiny_tokenizer
    from transformers import AutoModelForCausalLM

    from draft_rag import DraftEngine
    from draft_rag.models import LoadedModel

    torch.manual_seed(0)
    short = AutoModelForCausalLM.from_config(tiny_config("llama", max_position_embeddings=512)).eval()
    draft = LoadedModel(short, tiny_tokenizer(), "tiny-512")
    cfg = SpecPCConfig(starting_layer_index=1, window_size=8, kernel_size=5)
    rows = cost.run_cost(draft, ["tiny"], [800], budgets=[cost.BudgetLevel(0.5, 64)], repeats=1, new_tokens=3,
                         methods=["specpc", "speckv"], specpc=cfg, out=tmp_path)  # fmt: skip
    past = {r["method"]: r["past_draft_window"] for r in rows}
    assert rows[0]["draft_tokens"] > 512 and past == {"full": False, "specpc": False, "speckv": True}
    assert json.loads((tmp_path / "cost.json").read_text())["meta"]["draft_window"] == 512
    assert "| speckv@64 (past the draft's window) |" in cost.table(rows) and "specpc@50% (past" not in cost.table(rows)
    target = cost.build_target("tiny", draft, 2)
    with pytest.raises(ValueError, match="more than its context window of 512"):
        DraftEngine(target, draft, specpc=cfg).generate(cost.prompt(draft.tokenizer, 800), method="speckv", budget=64)
