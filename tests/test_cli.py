"""The draft-rag CLI on a tiny local model directory."""

import json
import logging
import shutil

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
    assert (
        main(
            [
                "compress",
                "--draft",
                tiny_dir,
                "--budget",
                "80",
                "--question",
                "Why?",
                "--json",
                "--starting-layer-index",
                "0",
                "--window-size",
                "8",
                prompt_file,
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"text", "original_tokens", "compressed_tokens", "kept_spans", "seconds"}
    assert out["text"].endswith("Why?") and out["compressed_tokens"] < out["original_tokens"]


def test_generate_full_prints_only_the_answer(tiny_dir, prompt_file, capsys):
    assert (
        main(
            [
                "generate",
                "--target",
                tiny_dir,
                "--method",
                "full",
                "--max-new-tokens",
                "4",
                "--json",
                "--starting-layer-index",
                "0",
                prompt_file,
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["stats"]["method"] == "full" and out["stats"]["new_tokens"] <= 4


def run_cli(argv, capsys, caplog) -> tuple[int, str]:
    """Exit code and what went to stderr: argparse's usage errors plus the logged error line."""
    caplog.clear()
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    logged = "".join(f"{r.getMessage()}\n" for r in caplog.records if r.levelno >= logging.ERROR)
    return code, capsys.readouterr().err + logged


def test_errors_exit_non_zero_with_a_message(tiny_dir, prompt_file, capsys, caplog):
    code, err = run_cli(["compress", "--draft", tiny_dir, "--ratio", "1.5", prompt_file], capsys, caplog)
    assert code == 2 and "--ratio" in err
    code, err = run_cli(["compress", prompt_file], capsys, caplog)  # a budget is required
    assert code == 2 and "--budget" in err


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if the CLI gets as far as loading a model."""
    import draft_rag.engine

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(draft_rag.engine, "load_model", refuse)


def _bad_inputs(tmp_path, tiny_dir):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9 au lait".encode("latin-1"))
    truncated = tmp_path / "truncated-model"
    shutil.copytree(tiny_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    ok = tmp_path / "ok.txt"
    ok.write_text("some text")
    return [
        (["compress", "--budget", "10", str(tmp_path)], "is a directory"),
        (["compress", "--budget", "10", str(tmp_path / "missing.txt")], "input file not found"),
        (["compress", "--budget", "10", str(binary)], "not UTF-8"),
        (["compress", "--budget", "0", str(ok)], "--budget"),
        (["compress", "--ratio", "nan", str(ok)], "--ratio"),
        (["compress", "--budget", "10", "--draft", str(tmp_path / "no-such-model"), str(ok)], "--draft"),
        (["compress", "--budget", "10", "--draft", "./nothing/here", str(ok)], "not found"),
        (["compress", "--budget", "10", "--draft", str(broken), str(ok)], "not a valid model config"),
        (["compress", "--budget", "10", "--draft", str(ok), str(ok)], "not a .gguf"),
        (["compress", "--budget", "10", "--draft", str(truncated), str(ok)], "truncated or corrupt"),
        (["compress", "--budget", "10", "--draft", tiny_dir, "--window-size", "0", str(ok)], "window_size"),
        (["generate", "--target", str(tmp_path / "nope.gguf"), str(ok)], "GGUF file not found"),
        (["generate", "--target", tiny_dir, "--temperature", "-1", str(ok)], "--temperature"),
        (["generate", "--target", tiny_dir, "--max-new-tokens", "0", str(ok)], "--max-new-tokens"),
        (["models", "pull", "gpt-5"], "unknown built-in model"),
        (["compress", "--budget", "auto", "--draft", tiny_dir, str(ok)], "--context-window"),
        (["compress", "--budget", "auto", "--context-window", "-5", str(ok)], "--context-window"),
        (["compress", "--budget", "10", "--block-size", "0", str(ok)], "--block-size"),
        (["generate", "--target", tiny_dir, "--method", "speckv", "--budget", "auto", str(ok)], "--method specpc"),
        (["serve", "--queue-timeout", "0"], "--queue-timeout"),
        (["serve", "--upstream-timeout", "inf"], "--upstream-timeout"),
        (["serve", "--max-queue", "-1"], "--max-queue"),
        (["serve", "--upstream", "http://127.0.0.1:9", "--sparse-prefill"], "--sparse-prefill needs a local target"),
        (["generate", "--target", tiny_dir, "--sparse-prefill", "--prefill-window-size", "0", str(ok)], "window-size"),
        (["compress", "--budget", "10", "--coverage", "0.8", str(ok)], "--coverage sets the adaptive budget"),
        (["generate", "--target", tiny_dir, "--kv-lookahead-tokens", "4", str(ok)], "--kv-lookahead-tokens"),
        (["eval", "--data", str(ok), "--method", "specpc", "--budget", "10", "--ratio", "0.5"], "not both"),
        (["eval", "--data", str(ok), "--method", "speckv", "--budget", "adaptive"], "--budget adaptive is for"),
        (["eval", "--data", str(ok), "--method", "specpc", "--budget", "9", "--coverage", "0.8"], "--coverage"),
    ]


def test_bad_input_is_one_line_exit_2_before_any_model_loads(tmp_path, tiny_dir, no_model_loads, capsys, caplog):
    for argv, words in _bad_inputs(tmp_path, tiny_dir):
        code, err = run_cli(argv, capsys, caplog)
        assert code == 2 and words in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)


def test_invalid_utf8_on_stdin(monkeypatch, no_model_loads, capsys, caplog):
    import io

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"ok \xff\xfe broken")))
    assert run_cli(["compress", "--budget", "5", "-"], capsys, caplog) == (
        2,
        "stdin is not UTF-8 text (invalid byte at offset 3)\n",
    )


def test_internal_error_exit_1_and_debug_shows_it(monkeypatch, tiny_dir, prompt_file, capsys, caplog):
    import draft_rag.engine

    def crash(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(draft_rag.engine.DraftEngine, "compress", crash)
    argv = ["compress", "--draft", tiny_dir, "--budget", "10", "--starting-layer-index", "0", prompt_file]
    code, err = run_cli(argv, capsys, caplog)
    assert code == 1 and err.startswith("internal error: 'boom' (KeyError") and err.count("\n") == 1
    with pytest.raises(KeyError):
        main(["--debug"] + argv)


def test_generate_speckv_pc_takes_both_budgets(tiny_dir, prompt_file, capsys):
    assert (
        main(
            [
                "generate",
                "--target",
                tiny_dir,
                "--method",
                "speckv-pc",
                "--budget",
                "40",
                "--pc-budget",
                "120",
                "--max-new-tokens",
                "3",
                "--json",
                "--starting-layer-index",
                "0",
                prompt_file,
            ]
        )
        == 0
    )
    stats = json.loads(capsys.readouterr().out)["stats"]
    assert (
        stats["prompt_tokens"] < stats["original_tokens"] and max(stats["kv_entries"]) == 41
    )  # 40 + the re-fed last prompt token


def test_lookahead_flags_name_their_method_and_old_names_warn(caplog):
    from draft_rag.cli import build_parser

    parse = build_parser().parse_args
    with caplog.at_level(logging.WARNING):
        new = parse(["generate", "f.txt", "--pc-lookahead-tokens", "3", "--kv-lookahead-tokens", "5"])
        assert not caplog.records
        old = parse(["generate", "f.txt", "--lookahead-tokens", "3"])
        demo = parse(["demo", "--model", "some/model"])
    assert (new.lookahead_tokens, new.kv_lookahead_tokens, old.lookahead_tokens) == (3, 5, 3)
    assert parse(["demo", "--target", "x"]).target == "x" and demo.target == "some/model"
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [
        "--lookahead-tokens is deprecated and will be removed: use --pc-lookahead-tokens",
        "--model is deprecated and will be removed: use --target",
    ]
    args = parse(["eval", "--data", "d.jsonl", "--method", "specpc", "--budget", "adaptive", "--coverage", "0.8"])
    assert (args.budget, args.coverage) == ("adaptive", 0.8)


def test_generate_kv_lookahead_sets_speckvs_lookahead(tiny_dir, prompt_file, capsys):
    base = ["generate", "--target", tiny_dir, "--method", "speckv", "--budget", "16", "--max-new-tokens", "6"]
    looked = {}
    for extra in ([], ["--kv-lookahead-tokens", "2"]):
        assert main(base + extra + ["--json", prompt_file]) == 0
        looked[len(extra)] = json.loads(capsys.readouterr().out)["stats"]["lookahead_tokens"]
    assert looked == {0: 6, 2: 2}  # default: max_new_tokens; the flag: its own count
