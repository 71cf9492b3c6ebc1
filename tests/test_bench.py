"""draft_rag.bench: RULER data and metric, task generators, runner, grid, report and CLI (tiny models)."""

import json
import tempfile
from pathlib import Path

import pytest
from conftest import tiny_model, tiny_tokenizer

from draft_rag import DraftEngine, SpecPCConfig
from draft_rag.bench import evaluate, load_jsonl, score_all, split_input, string_match_all
from draft_rag.bench.data import chunked, parse_record, string_match_part, task_metric
from draft_rag.bench.grid import Pair, budgets_for, cells_for, load_results, parse_pair, run_grid
from draft_rag.bench.report import block_table, chunk_table, grid_table, label, summary_table, write_report
from draft_rag.bench.tasks import LEGACY_TASKS, generate, retrieval_qa
from draft_rag.cli import main
from draft_rag.corpus import stdlib_passages
from draft_rag.prompt import count_tokens

RULER_LINE = {
    "index": 0,
    "input": "A special magic number is hidden within the following text.\n"
    "The grass is green.\nOne of the special magic numbers for calm-river is: 1234567.\n"
    "What is the special magic number for calm-river mentioned in the provided text?",
    "outputs": ["1234567"],
    "answer_prefix": " The special magic number for calm-river is",
    "length": 60,
}


@pytest.fixture(scope="module")
def tiny_engine():
    cfg = SpecPCConfig(starting_layer_index=0, window_size=8, kernel_size=5, neighbor_tokens=4)
    return DraftEngine(target=tiny_model("llama"), specpc=cfg)


def test_string_match_all_is_rulers_metric():
    assert string_match_all("The numbers are 1 and 2", ["1", "2", "3"]) == pytest.approx(2 / 3)
    assert string_match_all("ANSWER: Foo", ["foo"]) == 1.0
    assert string_match_all("", ["x"]) == 0.0
    records = [parse_record(RULER_LINE), parse_record({**RULER_LINE, "outputs": ["a", "b"]})]
    assert score_all(["1234567", "a only"], records) == pytest.approx(75.0)
    with pytest.raises(ValueError, match="equal length"):
        score_all(["x"], records)


def test_load_jsonl_keeps_fields_and_names_bad_input(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(RULER_LINE) + "\n\n" + json.dumps({**RULER_LINE, "index": 1, "answer_prefix": None}) + "\n")
    recs = load_jsonl(f)
    assert [r.index for r in recs] == [0, 1] and recs[1].answer_prefix == ""
    assert dict(recs[0].extra) == {"length": 60} and recs[0].to_dict()["length"] == 60
    assert len(load_jsonl(f, limit=1)) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RULER_LINE) + "\n" + json.dumps({"input": "x", "outputs": "1"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: 'outputs' must be a non-empty list"):
        load_jsonl(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not valid JSON"):
        load_jsonl(bad)
    with pytest.raises(FileNotFoundError, match="--data"):
        load_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="limit"):
        load_jsonl(f, limit=0)


def test_split_input_protects_instruction_and_question():
    instruction, context, question = split_input(RULER_LINE["input"])
    assert instruction.startswith("A special magic number is hidden")
    assert question.startswith("What is the special magic number")
    assert "1234567" in context and "What is" not in context
    # one line only: all context, nothing protected
    assert split_input("just one line of text") == ("", "just one line of text", "")


@pytest.mark.parametrize("task", LEGACY_TASKS)  # RULER's 13: test_ruler.py
def test_generated_tasks_fit_the_length_and_hold_their_answers(task):
    tok, length = tiny_tokenizer(), 1500 if task == "qa" else 600  # the tiny BPE spends many tokens on prose
    recs = generate(task, tok, length, 2, seed=3)
    assert len(recs) == 2 and recs == generate(task, tok, length, 2, seed=3)
    assert recs != generate(task, tok, length, 2, seed=4)
    for r in recs:
        rec = parse_record(r)
        assert r["length"] == count_tokens(tok, r["input"]) <= length
        assert rec.max_new_tokens and rec.answer_prefix
        _, context, question = split_input(r["input"])
        assert question and all(o in context for o in r["outputs"])
    if task.startswith("niah"):
        assert recs[0]["length"] > 500  # filled close to the requested length
    with pytest.raises(ValueError, match="too small"):
        generate(task, tok, 20, 1)


def test_retrieval_qa_uses_real_docs_and_hides_the_quoted_sentence():
    passages = stdlib_passages()
    assert len(passages) > 50 and len({p["id"] for p in passages}) == len(passages)
    rec = retrieval_qa(tiny_tokenizer(), 1500, 1, seed=1, passages=passages)[0]
    gold = next(p for p in passages if p["id"] == rec["gold"])
    _, context, question = split_input(rec["input"])
    assert gold["first"] in question and gold["first"] not in context
    assert gold["text"] in context and rec["gold"] in rec["documents"] and rec["outputs"] == [gold["name"]]


def test_evaluate_full_and_specpc_on_a_tiny_model(tiny_engine):
    recs = [parse_record(r) for r in generate("niah_single", tiny_tokenizer(), 500, 2, seed=1)]
    full = evaluate(tiny_engine, recs, "full", max_new_tokens=4, progress=False)
    again = evaluate(tiny_engine, recs, "full", max_new_tokens=4, progress=False)
    assert [r["prediction"] for r in full.records] == [r["prediction"] for r in again.records]  # greedy
    assert full.n == 2 and full.score == score_all([r["prediction"] for r in full.records], recs)
    assert full.avg_kept_tokens == full.avg_input_tokens > 450 and full.kv_bytes > 0
    pc = evaluate(tiny_engine, recs, "specpc", ratio=0.5, max_new_tokens=4, progress=False)
    assert pc.avg_kept_tokens < 0.7 * pc.avg_input_tokens and pc.avg_input_tokens == full.avg_input_tokens
    assert pc.kv_bytes < full.kv_bytes and pc.seconds["draft"] > 0
    assert set(pc.to_dict()) == {
        "method",
        "budget",
        "ratio",
        "n",
        "score",
        "avg_input_tokens",
        "avg_kept_tokens",
        "seconds",
        "kv_bytes",
        "metric",
        "scores",
        "sparse_layers",
        "follow_up",
        "unsupported",
    }
    assert pc.unsupported == sum(r["unsupported"] for r in pc.records) == 0  # the default granularity
    assert pc.metric == "all" and pc.scores["all"] == pc.score and pc.scores["part"] >= pc.score
    with pytest.raises(ValueError, match="method must be one of"):
        evaluate(tiny_engine, recs, "nope", progress=False)
    with pytest.raises(ValueError, match="LLMLinguaClient"):
        evaluate(tiny_engine, recs, "llmlingua", ratio=0.5, progress=False)


def test_string_match_part_is_rulers_qa_metric():
    assert string_match_part("It is Foo.", ["foo", "bar"]) == 1.0
    assert string_match_part("nothing", ["foo", "bar"]) == 0.0
    assert task_metric("qa_1") == task_metric("qa_2") == "part"
    assert {task_metric(t) for t in ("niah_single_1", "vt", "cwe", "fwe")} == {"all"}


def test_evaluate_scores_with_the_metric_asked(tiny_engine):
    rec = parse_record({**RULER_LINE, "outputs": ["zzzunlikely", "the"]})
    part = evaluate(tiny_engine, [rec], "full", max_new_tokens=6, progress=False, metric="part")
    assert part.metric == "part" and part.score == part.scores["part"]
    assert part.scores["all"] == 100 * string_match_all(part.records[0]["prediction"], rec.outputs)
    with pytest.raises(ValueError, match="metric must be one of"):
        evaluate(tiny_engine, [rec], "full", progress=False, metric="exact")


def test_speckv_pc_cells_carry_prompt_ratio_and_kv_budget(tiny_engine):
    assert budgets_for("speckv-pc", [0.25, 0.5], [256]) == [(256, 0.25), (256, 0.5)]
    assert budgets_for("specpc", [0.25], [256]) == [(None, 0.25)]
    assert label({"method": "speckv-pc", "ratio": 0.25, "budget": 256}) == "speckv-pc @25% / 256 KV"
    assert (
        label({"method": "specpc", "ratio": 0.25, "budget": None, "block_size": 8192}) == "specpc @25% [blocks of 8192]"
    )
    recs = [parse_record(r) for r in generate("niah_single", tiny_tokenizer(), 500, 1, seed=3)]
    pc = evaluate(tiny_engine, recs, "specpc", ratio=0.5, max_new_tokens=3, progress=False)
    both = evaluate(tiny_engine, recs, "speckv-pc", ratio=0.5, budget=64, max_new_tokens=3, progress=False)
    # the same prompt budget (SpecKV-PC's SpecPC stage drafts 20 tokens, so its whole units may differ a little)
    assert abs(both.avg_kept_tokens - pc.avg_kept_tokens) <= 0.05 * pc.avg_kept_tokens
    assert both.kv_bytes < pc.kv_bytes  # and fewer KV entries than that prompt


def test_evaluate_kv_method_reports_kept_entries(tiny_engine):
    recs = [parse_record(r) for r in generate("niah_single", tiny_tokenizer(), 300, 1, seed=2)]
    res = evaluate(tiny_engine, recs, "snapkv", budget=64, max_new_tokens=3, progress=False)
    assert res.avg_kept_tokens <= 64 + 8 and res.avg_input_tokens > 250


def test_grid_reuses_cells_and_writes_report(tiny_dir, tmp_path):
    pair = Pair("tiny", tiny_dir, tiny_dir)
    data = run_grid(
        [pair],
        ["niah_single"],
        [200],
        2,
        ["full", "snapkv"],
        kv_budgets=[64],
        out_dir=tmp_path,
        max_new_tokens=3,
        progress=False,
    )
    assert [(c["method"], c["budget"]) for c in data["results"]] == [("full", None), ("snapkv", 64)]
    stamp = [c["date"] for c in data["results"]]
    again = run_grid(
        [pair],
        ["niah_single"],
        [200],
        2,
        ["full", "snapkv"],
        kv_budgets=[64, 32],
        out_dir=tmp_path,
        max_new_tokens=3,
        progress=False,
    )
    assert [c["date"] for c in again["results"][:2]] == stamp and again["results"][2]["budget"] == 32
    assert load_results(tmp_path / "results.json") == again
    assert (tmp_path / "data" / f"niah_single_200_{tmp_path.name and 'tiny-bench'}0.jsonl").exists() or list(
        (tmp_path / "data").glob("niah_single_200_*.jsonl")
    )
    paths = write_report(again, tmp_path)
    md = paths["markdown"].read_text()
    assert "| full |" in md and "snapkv @32" in md and "snapkv @64" in md
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    single = run_grid(
        [pair], ["niah_single"], [200], 2, ["full"], out_dir=tmp_path, max_new_tokens=3, progress=False, block_size=4096
    )
    assert len(single["results"]) == 4 and single["results"][3]["block_size"] == 4096  # a new cell beside the old


def test_report_tables_from_cells():
    cell = dict(
        pair="p",
        task="t",
        length=100,
        n=2,
        method="specpc",
        budget=None,
        ratio=0.25,
        score=50.0,
        avg_input_tokens=100.0,
        avg_kept_tokens=25.0,
        seconds={"draft": 1.0, "target": 2.0, "total": 3.0},
        kv_bytes=2**20,
    )
    table = grid_table([cell, {**cell, "method": "full", "ratio": None, "score": 100.0, "avg_kept_tokens": 100.0}])
    assert table.index("| full |") < table.index("| specpc @25% |") and "| 25 / 100 |" in table
    assert "| 1.0 |" in table  # KV MiB
    rows = chunk_table([{"ranker": "bm25", "keep": 0.25, "recall": 50.0, "score": None, "rank_seconds": 0.1, "n": 2}])
    assert "| bm25 | 1/4 | 50.0 |" in rows


def test_block_table_pairs_block_scored_cells_with_one_pass_cells():
    base = dict(pair="p", length=4096, n=8, seed=42, method="specpc", budget=None, ratio=0.25, avg_kept_tokens=1000.0)
    secs = {"draft": 20.0, "target": 5.0, "total": 25.0}
    cells = [
        {**base, "task": "vt", "score": 40.0, "seconds": secs},
        {**base, "task": "vt", "score": 60.0, "seconds": {**secs, "draft": 24.0}, "block_size": 8192},
        {**base, "task": "cwe", "score": 30.0, "seconds": secs},  # no one-pass cell: left out
        {**base, "task": "qa_2", "score": 50.0, "seconds": secs},
        {**base, "task": "qa_2", "score": 50.0, "seconds": secs, "block_size": 8192},
    ]
    table = block_table(cells)
    assert table.index("| vt |") < table.index("| qa_2 |")  # RULER's order, not the alphabet
    assert "| p | 4096 | specpc @25% | vt | 40.0 | 60.0 | 1000 / 1000 | 20.0 / 24.0 |" in table
    assert "2 cells: mean score 45.0 in blocks, 55.0 in one pass; blocks lower in 1, higher in 0, equal in 1." in table
    assert block_table(cells[:1]) == ""


def test_summary_table_groups_niah_and_counts_records():
    base = dict(pair="p", length=100, n=2, budget=None, ratio=None, score=0.0, avg_input_tokens=90)
    cells = [
        {**base, "task": "niah_single_1", "method": "full", "score": 100.0, "avg_kept_tokens": 90},
        {**base, "task": "niah_multikey_1", "method": "full", "score": 50.0, "avg_kept_tokens": 90},
        {**base, "task": "vt", "method": "full", "score": 30.0, "avg_input_tokens": 120, "avg_kept_tokens": 120},
        {**base, "task": "niah_single_1", "method": "specpc", "ratio": 0.25, "score": 80.0, "avg_kept_tokens": 20},
    ]
    table = summary_table(cells)
    assert "| method @ budget | mean | niah (2 tasks) | vt | kept tokens | records |" in table
    assert "| full | **60.0** | 75.0 | 30.0 | 100 / 100 | 6 |" in table
    assert "| specpc @25% |  |  |  |  | 2 |" in table  # a partial row has no means to mislead
    stats = dict(avg_input_tokens=9, avg_kept_tokens=9, kv_bytes=0, seconds=dict(draft=0, target=1, total=1))
    late = [{**base, **stats, "task": t, "method": "full"} for t in ("qa_1", "vt", "niah_multikey_3", "niah_single_2")]
    header = grid_table(late).splitlines()[2]  # merged out of order, tabled in RULER's order
    assert header.startswith("| method @ budget | niah_single_2 | niah_multikey_3 | vt | qa_1 |")


def test_parse_pair():
    assert parse_pair("a:b") == Pair("a->b", "b", "a")
    assert parse_pair("x=/m/a:/m/b") == Pair("x", "/m/b", "/m/a")
    with pytest.raises(ValueError, match="--pair"):
        parse_pair("justone")


def test_cli_eval_json_and_errors(tiny_dir, tmp_path, capsys, caplog):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in generate("niah_single", tiny_tokenizer(), 400, 2)) + "\n")
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "eval",
                "--data",
                str(data),
                "--method",
                "full",
                "--target",
                tiny_dir,
                "--limit",
                "1",
                "--max-new-tokens",
                "3",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n"] == 1 and summary["method"] == "full" and set(summary["seconds"]) == {"draft", "target", "total"}
    full = json.loads(out.read_text())
    assert full["records"][0]["outputs"] and "prediction" in full["records"][0]
    assert main(["eval", "--data", str(data), "--method", "specpc", "--target", tiny_dir]) == 2
    assert "--budget N or --ratio R" in caplog.text
    assert main(["eval", "--data", str(tmp_path / "none.jsonl"), "--method", "full", "--target", tiny_dir]) == 2
    with pytest.raises(SystemExit):
        main(["eval", "--data", str(data), "--method", "full", "--ratio", "1.5"])


@pytest.mark.slow
def test_cli_eval_budget_adaptive(smollm, tiny_dir, tmp_path, capsys):
    """``eval --budget adaptive`` (once refused as "expected an integer >= 1") runs SpecPC's adaptive budget."""
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in generate("niah_single", tiny_tokenizer(), 400, 1)) + "\n")
    argv = ["eval", "--data", str(data), "--method", "specpc", "--target", tiny_dir, "--draft", "smollm2-135m-instruct"]
    assert main(argv + ["--max-new-tokens", "3", "--budget", "adaptive", "--coverage", "0.5"]) == 0
    adaptive = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert adaptive["n"] == 1 and 0 < adaptive["avg_kept_tokens"] < adaptive["avg_input_tokens"]


def test_merge_results_keeps_existing_cells(tmp_path):
    from draft_rag.bench.grid import merge_results, save_results

    cell = dict(pair="p", task="t", length=1, n=1, seed=1, method="full", budget=None, ratio=None, score=1.0)
    save_results({"results": [cell], "chunks": []}, tmp_path / "a" / "results.json")
    save_results(
        {"results": [{**cell, "score": 2.0}, {**cell, "method": "x"}], "chunks": [{"ranker": "bm25"}]},
        tmp_path / "b.json",
    )
    data = merge_results(tmp_path / "a" / "results.json", [tmp_path / "b.json"])
    assert [(c["method"], c["score"]) for c in data["results"]] == [("full", 1.0), ("x", 1.0)]
    assert data["chunks"] == [{"ranker": "bm25"}]
    with pytest.raises(FileNotFoundError, match="--merge"):
        merge_results(tmp_path / "a" / "results.json", [tmp_path / "nope.json"])


def test_upgrade_cells_rescores_qa_and_names_speckv_pc_kv(tmp_path):
    from draft_rag.bench.data import write_jsonl
    from draft_rag.bench.grid import LEGACY_SPECKV_PC_KV, data_path, merge_results, save_results, upgrade_cells

    rec = {**RULER_LINE, "outputs": ["alpha", "beta"]}
    write_jsonl([rec, rec], data_path(tmp_path / "run", "qa_2", 64, "models/d"))
    base = dict(pair="p", task="qa_2", length=64, n=2, seed=1, draft="models/d", budget=None, ratio=0.25)
    qa = dict(base, method="specpc", score=75.0, predictions=["alpha and beta", "only beta"])
    old_pc = dict(base, method="speckv-pc", score=75.0, predictions=["alpha and beta", "only beta"])
    wrong = dict(base, method="full", ratio=None, score=10.0, predictions=["alpha", "beta"])  # not these records
    save_results({"results": [qa, old_pc, wrong], "chunks": []}, tmp_path / "run" / "results.json")
    data = merge_results(tmp_path / "out" / "results.json", [tmp_path / "run" / "results.json"])
    assert data_path(tmp_path / "out", "qa_2", 64, "d").exists()  # the records came along
    assert upgrade_cells(data, tmp_path / "out") == 3
    qa, old_pc, wrong = data["results"]
    assert qa["metric"] == "part" and qa["score"] == 100.0 and qa["scores"] == {"all": 75.0, "part": 100.0}
    assert old_pc["budget"] == LEGACY_SPECKV_PC_KV and old_pc["score"] == 100.0
    assert "metric" not in wrong and wrong["score"] == 10.0
    assert upgrade_cells(data, tmp_path / "out") == 0  # idempotent


def test_bench_merge_alone_only_reports(tmp_path, monkeypatch):
    """`draft-rag bench --merge F --out D` merges and reports; it runs no cells unless --tasks names some."""
    import draft_rag.bench.grid as grid
    from draft_rag.bench.grid import save_results

    cells = []

    def fake_grid(pairs, tasks, *a, **kw):
        cells.append(tasks)
        return load_results(Path(kw["out_dir"]) / "results.json")

    monkeypatch.setattr(grid, "run_grid", fake_grid)
    cell = dict(pair="p", task="vt", length=1, n=1, seed=1, method="full", budget=None, ratio=None, score=50.0)
    cell.update(avg_input_tokens=9, avg_kept_tokens=9, kv_bytes=0, seconds=dict(draft=0, target=1, total=1))
    save_results({"results": [cell], "chunks": []}, tmp_path / "b.json")
    assert main(["bench", "--merge", str(tmp_path / "b.json"), "--out", str(tmp_path / "out")]) == 0
    assert cells == [] and load_results(tmp_path / "out" / "results.json")["results"] == [cell]
    assert (tmp_path / "out" / "results.md").exists()
    assert main(["bench", "--merge", str(tmp_path / "b.json"), "--tasks", "vt", "--out", str(tmp_path / "out")]) == 0
    assert cells == [["vt"]]


def test_draft_overhead_times_both_passes(tiny_engine):
    from draft_rag.bench.runner import draft_overhead

    recs = [parse_record(r) for r in generate("niah_single", tiny_tokenizer(), 500, 1, seed=1)]
    row = draft_overhead(tiny_engine, recs, ratio=0.5, repeats=1)
    assert row["n"] == 1 and row["plain_forward_s"] > 0 and row["specpc_draft_s"] > 0
    assert row["overhead_pct"] == pytest.approx(100 * (row["specpc_draft_s"] / row["plain_forward_s"] - 1))
    md = write_report(
        {"results": [], "chunks": [], "overhead": [{**row, "pair": "p", "length": 500}]}, Path(tempfile.mkdtemp())
    )["markdown"].read_text()
    assert "| p | 500 | 1 |" in md


def test_adaptive_cells_run_specpc_at_each_coverage(tiny_dir, tmp_path, monkeypatch):
    from draft_rag.bench import grid

    small = SpecPCConfig(starting_layer_index=0, window_size=8, kernel_size=5, neighbor_tokens=4)
    monkeypatch.setattr(grid, "DraftEngine", lambda **kw: DraftEngine(specpc=small, **kw))  # the tiny draft's layers
    assert cells_for("specpc", [0.25], [], [0.9]) == [(None, 0.25, None, False), ("adaptive", None, 0.9, False)]
    assert cells_for("snapkv", [0.25], [64], [0.9]) == [(64, None, None, False)]  # only specpc has adaptive cells
    assert label({"method": "specpc", "ratio": None, "budget": "adaptive", "coverage": 0.8}) == "specpc @adaptive 80%"
    pair = Pair("tiny", tiny_dir, tiny_dir)
    kw = dict(ratios=[0.5], out_dir=tmp_path, max_new_tokens=2, progress=False)
    data = run_grid([pair], ["niah_single"], [300], 2, ["specpc"], coverages=[0.3, 0.99], **kw)
    fixed, low, high = data["results"]
    assert (low["budget"], low["coverage"], high["coverage"]) == ("adaptive", 0.3, 0.99) and "coverage" not in fixed
    assert low["avg_kept_tokens"] < high["avg_kept_tokens"] <= high["avg_input_tokens"]  # coverage sets the budget
    assert run_grid([pair], ["niah_single"], [300], 2, ["specpc"], coverages=[0.3, 0.99], **kw) == data  # reused
    md = write_report(data, tmp_path)["markdown"].read_text()
    assert "specpc @adaptive 30%" in md and "specpc @adaptive 99%" in md and "specpc @50%" in md
    engine = DraftEngine(target=tiny_dir, specpc=small)
    recs = [parse_record(r) for r in generate("niah_single", tiny_tokenizer(), 300, 1, seed=3)]
    with pytest.raises(ValueError, match="coverage is an adaptive budget for specpc alone"):
        evaluate(engine, recs, "snapkv", budget=64, coverage=0.9, progress=False)
    evaluate(engine, recs, "specpc", coverage=0.5, max_new_tokens=1, progress=False)
    assert engine.specpc.coverage is None  # the engine's own settings are back


def test_chunked_cells_read_chunks_through_the_chunk_cache(tiny_dir, tmp_path, monkeypatch):
    from draft_rag.bench import grid

    small = SpecPCConfig(starting_layer_index=0, window_size=8, kernel_size=5, neighbor_tokens=4)
    monkeypatch.setattr(grid, "DraftEngine", lambda **kw: DraftEngine(specpc=small, **kw))
    context = split_input(generate("niah_single", tiny_tokenizer(), 600, 1, seed=3)[0]["input"])[1]
    pieces = chunked(context, tiny_tokenizer(), 64)
    assert "".join(pieces) == context and len(pieces) > 3
    assert all(count_tokens(tiny_tokenizer(), p) < 64 + 40 for p in pieces[:-1])  # cut at the first sentence end
    pair = Pair("tiny", tiny_dir, tiny_dir)
    kw = dict(ratios=[0.5], out_dir=tmp_path, max_new_tokens=2, progress=False, chunk_tokens=64)
    exact = run_grid([pair], ["niah_single"], [300], 2, ["full", "specpc"], **kw)["results"]
    cached = run_grid([pair], ["niah_single"], [300], 2, ["specpc"], chunk_cache_mb=16, **kw)["results"]
    assert [label(c) for c in cached] == ["full [chunks of 64]", "specpc @50% [sentences] [chunks of 64]",
                                          "specpc @50% [sentences] [chunks of 64] +chunk cache"]  # fmt: skip
    assert cached[:2] == exact and cached[2]["seconds"]["warm"] > 0
    engine = DraftEngine(target=tiny_dir, specpc=small, chunk_cache_mb=16)
    recs = [parse_record(r) for r in generate("niah_single", tiny_tokenizer(), 300, 2, seed=3)]
    res = evaluate(
        engine, recs, "specpc", ratio=0.5, max_new_tokens=1, progress=False, chunk_tokens=64, warm_chunks=True
    )
    assert all(r["cached_tokens"] > 0.5 * r["draft_tokens"] for r in res.records)  # the question read warmed chunks


def test_sparse_prefill_cells_run_beside_dense_ones(tiny_dir, tmp_path, monkeypatch):
    assert cells_for("speckv", [], [64], sparse=True) == [(64, None, None, False), (64, None, None, True)]
    assert cells_for("specpc", [0.25], [], sparse=True) == [
        (None, 0.25, None, False)
    ]  # its target reads a short prompt
    assert label({"method": "full", "ratio": None, "budget": None, "sparse_prefill": True}) == "full +sparse"
    calls = []
    real = DraftEngine.stream

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("sparse_prefill"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DraftEngine, "stream", spy)
    pair = Pair("tiny", tiny_dir, tiny_dir)
    kw = dict(kv_budgets=[64], out_dir=tmp_path, max_new_tokens=2, progress=False)
    data = run_grid([pair], ["niah_single"], [300], 2, ["full", "snapkv"], sparse_prefill=True, **kw)
    assert [(c["method"], c.get("sparse_prefill")) for c in data["results"]] == [
        ("full", None),
        ("full", True),
        ("snapkv", None),
    ]
    assert calls == [None, None, True, True, None, None]  # the sparse cell's records asked for it
    assert run_grid([pair], ["niah_single"], [300], 2, ["full", "snapkv"], sparse_prefill=True, **kw) == data
    assert "| full +sparse |" in write_report(data, tmp_path)["markdown"].read_text()


def test_follow_ups_share_the_context_and_reuse_its_draft_kv(tiny_engine, tiny_dir, tmp_path, monkeypatch):
    from draft_rag.bench import grid
    from draft_rag.bench.data import follow_ups

    raw = generate("niah_multiquery", tiny_tokenizer(), 600, 2, seed=4)
    recs = [parse_record(r) for r in raw]
    asked = follow_ups(recs[0])
    assert len(asked) == 4 and not follow_ups(parse_record(RULER_LINE))
    for f in asked:
        assert split_input(f.input)[:2] == split_input(recs[0].input)[:2]  # instruction and context unchanged
        assert split_input(f.input)[2] == f.extra[0][1] and f.max_new_tokens == recs[0].max_new_tokens
    with pytest.raises(ValueError, match=r"follow_ups\[0\]: expected an object with a non-empty 'question'"):
        follow_ups(parse_record({**raw[0], "follow_ups": [{"question": " "}]}))
    res = evaluate(tiny_engine, recs, "specpc", ratio=0.5, max_new_tokens=2, progress=False, ask_follow_ups=True)
    first, then = res.records[0], res.records[0]["follow_ups"]
    assert first["cached_tokens"] == 0 and res.records[1]["cached_tokens"] == 0  # every record starts cold
    assert all(f["cached_tokens"] > 0.5 * f["draft_tokens"] for f in then)  # follow-ups reuse the context's KV
    summary = res.follow_up
    assert summary["questions"] == 8 and len(summary["predictions"]) == 8 and 0 <= summary["score"] <= 100
    cold = evaluate(tiny_engine, [asked[1]], "specpc", ratio=0.5, max_new_tokens=2, progress=False)
    assert cold.records[0]["prediction"] == then[1]["prediction"]  # a follow-up answers as a cold run does
    assert evaluate(tiny_engine, recs, "full", max_new_tokens=1, progress=False).follow_up is None
    monkeypatch.setattr(grid, "DraftEngine", lambda **kw: DraftEngine(specpc=tiny_engine.specpc, **kw))
    pair = Pair("tiny", tiny_dir, tiny_dir)
    kw = dict(ratios=[0.5], out_dir=tmp_path, max_new_tokens=2, progress=False, follow_ups=True)
    data = run_grid([pair], ["niah_multiquery", "niah_single_1"], [600], 1, ["specpc"], **kw)
    multi, single = data["results"]
    assert multi["follow_ups"] is True and multi["follow_up"]["questions"] == 4 and "follow_ups" not in single
    md = write_report(data, tmp_path)["markdown"].read_text()
    assert "## Follow-up questions" in md and "| tiny | 600 | specpc @50% [sentences] | niah_multiquery | 1 | 4 |" in md
    assert "niah_multiquery" not in md.split("## Follow-up questions")[0]  # follow-up cells stay out of the grid


def test_faithfulness_table_counts_only_cells_that_counted():
    from draft_rag.bench.report import faithfulness_table

    base = dict(pair="p", length=4096, n=8, seed=42, method="specpc", budget=None, ratio=0.25)
    cells = [
        dict(base, task="vt", granularity="sentence", unsupported=0),
        dict(base, task="cwe", granularity="sentence", unsupported=2),
        dict(base, task="vt"),  # a token cell from before the counter
    ]
    table = faithfulness_table(cells)
    assert "| p | 4096 | specpc @25% [sentences] | 2 | 16 | 2 | vt 0, cwe 2 |" in table
    assert "specpc @25% |" not in table and faithfulness_table(cells[2:]) == ""
