"""The draft-rag CLI on a tiny local model directory."""
import json

import pytest

from conftest import needle_prompt
from draft_rag.cli import main


@pytest.fixture
def prompt_file(tmp_path):
    text, _, _ = needle_prompt(20)
    f = tmp_path / "p.txt"
    f.write_text(text)
    return str(f)


def test_compress_json(tiny_dir, prompt_file, capsys):
    assert main(["compress", "--draft", tiny_dir, "--budget", "80", "--question", "Why?", "--json",
                 "--starting-layer-index", "0", "--window-size", "8", prompt_file]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"text", "original_tokens", "compressed_tokens", "kept_spans", "seconds"}
    assert out["text"].endswith("Why?") and out["compressed_tokens"] < out["original_tokens"]


def test_generate_full_prints_only_the_answer(tiny_dir, prompt_file, capsys):
    assert main(["generate", "--target", tiny_dir, "--method", "full", "--max-new-tokens", "4", "--json",
                 "--starting-layer-index", "0",
                 prompt_file]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stats"]["method"] == "full" and out["stats"]["new_tokens"] <= 4


def test_errors_exit_non_zero_with_a_message(tiny_dir, prompt_file, caplog):
    assert main(["compress", "--draft", tiny_dir, "--ratio", "1.5", prompt_file]) == 2
    assert "ratio" in caplog.text
    with pytest.raises(SystemExit):
        main(["compress", prompt_file])  # a budget is required


def test_generate_speckv_pc_takes_both_budgets(tiny_dir, prompt_file, capsys):
    assert main(["generate", "--target", tiny_dir, "--method", "speckv-pc", "--budget", "40", "--pc-budget", "120",
                 "--max-new-tokens", "3", "--json", "--starting-layer-index", "0", prompt_file]) == 0
    stats = json.loads(capsys.readouterr().out)["stats"]
    assert stats["prompt_tokens"] < stats["original_tokens"] and max(stats["kv_entries"]) == 41  # 40 + the re-fed last prompt token
