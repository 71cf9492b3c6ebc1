"""The figures the docs publish are the commands' committed output, not hand-copied numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _read(name: str) -> str:
    return (ROOT / name).read_text()


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end, text.index(start))]


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| method @")]


def test_readme_and_results_score_tables_are_the_bench_report():
    """Every score-table row in the README's Results and in docs/RESULTS.md is a line of docs/bench/results.md."""
    report = set(_read("docs/bench/results.md").splitlines())
    readme = _section(_read("README.md"), "## Results", "## Limitations")
    summary = _section(_read("docs/RESULTS.md"), "## Summary: what ran, and the scores", "## Summary: cost")
    results = _section(_read("docs/RESULTS.md"), "## Tables and plot", "## Reading the table")
    assert len(_table_rows(readme)) >= 5
    rows = _table_rows(readme) + _table_rows(summary) + _table_rows(results)
    assert len(rows) > 60
    assert [r for r in rows if r not in report] == []


def test_load_test_row_is_its_committed_output():
    out = json.loads((ROOT / "docs/bench/serve_load.json").read_text())
    readme = _read("docs/serving.md")
    row = next(line for line in readme.splitlines() if line.startswith(f"| {out['requests']} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    keys = ("requests", "answered", "refused_429", "refused_503", "lost", "median_kept_share")
    assert cells[:6] == [str(out[k]) for k in keys] and out["median_kept_share"] < 0.5  # SpecPC compressed
    assert cells[6:8] == [str(out["median_engine_s"]), str(out["median_latency_s"])]
    assert f"{out['rss_baseline_mib']} before" in row and f"{out['rss_peak_mib']} peak" in row
    assert cells[9] == str(out["queued_after"]) and str(out["sigterm_exit_code"]) in cells[10]
    after = out["rss_after_each_round_mib"][-1]
    assert f"RSS is {abs(after / out['rss_baseline_mib'] - 1):.1%} below its baseline" in " ".join(readme.split())


def test_qa_is_scored_with_rulers_metric_in_the_results():
    cells = json.loads((ROOT / "docs/bench/results.json").read_text())["results"]
    assert all(c["metric"] == ("part" if c["task"].startswith("qa") else "all") for c in cells)
    assert all(c["budget"] is not None for c in cells if c["method"] == "speckv-pc")


def test_cost_bench_through_the_engine_keeps_every_cell():
    """RESULTS.md: the 2k cost cells before and after the bench ran through DraftEngine.prepare hold the same
    target prompt tokens and KV bytes."""
    folder = ROOT / "docs/bench/cost_engine_check"
    before, after = (json.loads((folder / f).read_text())["rows"] for f in ("before.json", "after.json"))

    def cells(rows):
        return {(r["shape"], r["method"], str(r["budget"])): (r["target_tokens"], r["kv_bytes"]) for r in rows}

    assert len(cells(before)) == 7 and cells(before) == cells(after)
    assert "same target prompt tokens and KV bytes in all 7 cells" in " ".join(_read("docs/RESULTS.md").split())


def test_chunk_cache_qa_2_reading_matches_its_output():
    """chunk-cache.md's qa_2 sentence: records and gold names kept, from kept_qa_2.json."""
    data = json.loads(_read("docs/bench/chunk_cache/kept_qa_2.json"))
    rows, counts = data["rows"], data["counts"]
    names = [sum(len(r[k]) for r in rows) for k in ("exact", "chunk_cache")]
    said = (
        f"at least one gold name in {counts['exact']} with the exact pass and in {counts['chunk_cache']} with the "
        f"cache, {names[0]} gold names against {names[1]}"
    )
    assert len(rows) == 8 and said in " ".join(_read("docs/chunk-cache.md").split())


def test_chunk_cache_qa_2_at_24_records_matches_its_output():
    """chunk-cache.md's n=24 qa_2 sentence: scores, records answered overall and on the 16 added records; the first
    8 records are the n=8 run's, answered the same."""
    folder = ROOT / "docs/bench/chunk_cache/qa_2_n24"
    records = [json.loads(line) for line in (folder / "data/qa_2_4096_smollm2-135m-instruct.jsonl").open()]
    n8 = {bool(c.get("chunk_cache")): c for c in json.loads(_read("docs/bench/chunk_cache/results.json"))["results"]
          if c["task"] == "qa_2"}  # fmt: skip
    cells, hits = [], []
    for arm, cached in (("exact", False), ("chunk_cache", True)):
        cell = json.loads((folder / f"{arm}.json").read_text())["results"][0]
        assert cell["predictions"][:8] == n8[cached]["predictions"]
        got = [any(o.lower() in p.lower() for o in r["outputs"]) for p, r in zip(cell["predictions"], records)]
        cells.append(cell)
        hits.append(got)
    said = (
        f"qa_2 scores {cells[0]['score']:.1f} exact against {cells[1]['score']:.1f} with the cache, {sum(hits[0])} "
        f"records against {sum(hits[1])}: on the 16 added records both answer {sum(hits[0][8:])}"
    )
    assert len(records) == 24 and sum(hits[0][8:]) == sum(hits[1][8:])
    rows = json.loads((folder / "kept.json").read_text())["rows"][8:]
    kept = [sum(bool(r[k]) for r in rows) for k in ("exact", "chunk_cache")]
    names = [sum(len(r[k]) for r in rows) for k in ("exact", "chunk_cache")]
    said += f", and the kept text holds a gold name in {kept[0]} of them both ways ({names[0]} gold names exact, "
    said += f"{names[1]} with the cache"
    assert kept[0] == kept[1] and said in " ".join(_read("docs/chunk-cache.md").split())


def test_speckv_pc_keeps_fewer_kv_bytes_than_specpc_where_its_kv_budget_binds():
    cells = json.loads((ROOT / "docs/bench/results.json").read_text())["results"]
    pc = {(c["pair"], c["task"], c["length"], c["ratio"]): c["kv_bytes"] for c in cells if c["method"] == "specpc"}
    both = [c for c in cells if c["method"] == "speckv-pc" and c["budget"] < 1024]
    assert both and all(c["kv_bytes"] < pc[(c["pair"], c["task"], c["length"], c["ratio"])] for c in both)


def test_no_figure_without_committed_output():
    """Figures removed for want of committed output stay removed until a command's output is committed."""
    text = "".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    for gone in ("+1.8%", "21% at 8k", "36.00 s"):
        assert gone not in text, gone
    assert not re.search(r"0\.68x-1\.05x full's", text)


def test_score_figures_in_the_prose_are_in_the_bench_report():
    """Every score the README's and RESULTS.md's reading of the tables quotes (one decimal, not seconds) is a
    figure of docs/bench/results.md, so a rerun that changes the tables makes stale sentences fail here."""
    report = set(re.findall(r"\d+\.\d", (ROOT / "docs/bench/results.md").read_text()))
    readme = _section(_read("docs/RESULTS.md"), "was edited by hand. In short:", "**Not run yet")
    results = _section((ROOT / "docs/RESULTS.md").read_text(), "## Reading the table", "## LongLLMLingua")
    quoted = re.findall(r"(?<![\d.])\d+\.\d(?!\d)(?! s)", readme + results)
    assert len(quoted) > 40
    assert [n for n in quoted if n not in report] == []


def test_demo_figures_are_its_committed_output():
    out = (ROOT / "docs/bench/demo.txt").read_text().splitlines()
    summary = next(line for line in out if line.startswith("summary |"))
    readme = _read("docs/demo.md")
    assert summary in readme and "evidence kept 8/8" in summary
    runs = json.loads((ROOT / "docs/bench/demo.json").read_text())
    long = runs[-1]["runs"]
    assert long[0]["refused"] and long[1]["refused"] is None and long[1]["evidence"] is True
    assert f"{long[1]['original_tokens']:,} tokens" in readme and f"reading {long[1]['prompt_tokens']:,}" in readme
    assert long[1]["correct"] is True and "answers correctly" in readme  # the long act answers where full cannot
    window_sized = [r["runs"] for r in runs[:-1]]
    assert len(window_sized) >= 8
    full_kept, specpc_kept = (sum(bool(q[i]["evidence"]) for q in window_sized) for i in (0, 1))
    assert specpc_kept == full_kept == len(window_sized) and "the evidence survives in all 8 questions" in readme
    full_ok, specpc_ok = (sum(bool(q[i]["correct"]) for q in window_sized) for i in (0, 1))
    n = len(window_sized)
    if full_ok == specpc_ok:
        said = f"answers {full_ok} of {n} correctly either way"
    else:
        said = f"answers {full_ok} of {n} with full context\nand {specpc_ok} of {n} with SpecPC"
    assert said in readme
    prose = readme
    walls = [line for line in out if line.startswith("wall ") or " | wall " in line]
    figures = re.findall(r"(\d+(?:\.\d)?) s(?: per question| for the eight| inside the demo|\))", prose)
    assert len(figures) >= 4
    for figure in figures:
        assert any(f"{figure}s" in line for line in walls + [summary]), figure
    minutes, seconds = re.search(r"real\s+(\d+)m([\d.]+)s", (ROOT / "docs/bench/demo_time.txt").read_text()).groups()
    assert int(minutes) * 60 + float(seconds) < 360 and f"{minutes} min {round(float(seconds))} s" in readme


def test_cost_tables_are_the_cost_report():
    """RESULTS.md's speed-up summary and its cost tables are lines of docs/bench/cost/cost.md."""
    report = set((ROOT / "docs/bench/cost/cost.md").read_text().splitlines())
    readme = _section(_read("docs/RESULTS.md"), "**Cost with a target", "## What ran, and what did not")
    results = _section(_read("docs/RESULTS.md"), "### Measured: three target shapes", "### Not committed")
    rows = [line for line in (readme + results).splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) > 60
    assert [r for r in rows if r not in report] == []


def test_scripts_tables_in_results_are_their_committed_output():
    for name in ("context_cache.txt", "context_cache_speckv.txt", "adaptive_coverage.txt", "payoff.txt"):
        out = set((ROOT / "docs/bench" / name).read_text().splitlines())
        results = (ROOT / "docs/RESULTS.md").read_text()
        start = results.index(f"docs/bench/{name}")
        rows = [line for line in results[start:].split("\n\n|", 1)[1].split("\n\n")[0].splitlines()]
        rows = ["|" + rows[0]] + rows[1:]
        assert len(rows) > 3 and [r for r in rows if r not in out] == [], name


def test_sparse_prefill_tables_are_their_commands_output():
    """README's and RESULTS.md's sparse-prefill tables are lines of the cost report and the needle script's output."""
    out = set()
    for path in (ROOT / "docs/bench/sparse_prefill").iterdir():
        if path.suffix in (".md", ".txt"):
            out |= set(path.read_text().splitlines())
    readme = _read("docs/sparse-prefill.md")
    results = _section((ROOT / "docs/RESULTS.md").read_text(), "## Sparse prefill", "## Pays for itself")
    rows = [line for line in (readme + results).splitlines() if line.startswith("| ")]
    assert len(rows) > 10 and [r for r in rows if r not in out] == []


def test_sparse_prefill_lost_no_needle_dense_found():
    """The needle runs behind README's "no needle dense finds was lost": every length, every depth."""
    rows = [r for path in (ROOT / "docs/bench/sparse_prefill").glob("sparse_needles_*.json")
            for r in json.loads(path.read_text())["rows"]]  # fmt: skip
    assert {r["length"] for r in rows} == {8192, 16384, 32768}
    assert all(
        sorted(r["depth"] for r in rows if r["length"] == n) == [0.1, 0.3, 0.5, 0.7, 0.9] for n in (8192, 16384, 32768)
    )
    assert not [r for r in rows if r["dense"]["found"] and not r["sparse"]["found"]]
    assert all(r["dense"]["answer"].strip() == r["sparse"]["answer"].strip() for r in rows)  # "the same text"


def test_follow_up_rows_are_the_bench_report():
    report = set((ROOT / "docs/bench/results.md").read_text().splitlines())
    results = _section((ROOT / "docs/RESULTS.md").read_text(), "### In the RULER bench", "## The adaptive budget")
    rows = [r for r in results.splitlines() if r.startswith("| smollm2")]
    assert len(rows) == 2 and all(r in report for r in rows)
    ratios = sorted(r.split(" | ")[10] for r in rows)
    assert f"{ratios[0][:-1]}x-{ratios[1]}" in _read("docs/long-prompts.md")  # "0.12x-0.13x"


def test_block_table_is_the_bench_report():
    """RESULTS.md's block-vs-one-pass table is the report's, row for row, with its summary sentence."""
    report = _section(
        (ROOT / "docs/bench/results.md").read_text(), "## Block scoring vs one draft pass", "## Follow-up"
    )
    results = _section(
        (ROOT / "docs/RESULTS.md").read_text(), "## Block scoring against one draft pass", "## LongLLMLingua"
    )
    assert _table_rows(results) == _table_rows(report) and len(_table_rows(report)) > 8
    summary = next(line for line in report.splitlines() if " cells: mean score " in line)
    assert summary in results


def _pages() -> list[Path]:
    """README.md and every docs page but RESULTS.md (whose tables and readings have their own checks above)."""
    return [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "RESULTS.md")]


def _committed_output() -> str:
    """Every committed command output the docs may quote: docs/bench/** and docs/long_context.jsonl."""
    files = [p for p in (ROOT / "docs/bench").rglob("*") if p.suffix in (".md", ".txt", ".json", ".jsonl")]
    return "\n".join(p.read_text() for p in files + [ROOT / "docs/long_context.jsonl"])


def _prose(text: str) -> str:
    """``text`` without fenced blocks, inline code and link targets (settings and commands, not figures)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`]*`", "", text)
    text = re.sub(r"arXiv\s+\S+", "", text)
    return re.sub(r"\]\([^)]*\)", "]", text)


FIGURE = r"(?<![\w.,])\d{1,3}(?:,\d{3})+(?![\d,])|(?<![\w.])\d+\.\d+(?![\d.])"  # 7,950 or 3.77(x)
UNPUBLISHED = r"pip install (?!-e)['\"]?(draft-rag|langchain-draft-rag|llama-index-(llms|postprocessor)-draft-rag)\b"


def test_every_measured_figure_in_the_pages_is_committed_output():
    """A decimal figure (3.77x, 12.8 s, 0.95x) or a grouped count (7,950) in the prose or tables of the README and
    the docs pages is a number that a committed command output contains, maybe rounded (grouping commas dropped)."""
    numbers = set()
    for token in set(re.findall(r"\d+(?:\.\d+)?", _committed_output())):
        numbers.add(token)
        if "." in token:  # a figure may be the output's number rounded: 4.658 is quoted as 4.7
            places = len(token.split(".")[1])
            numbers |= {f"{float(token):.{d}f}" for d in range(places)}
    missing = {}
    for page in _pages():
        for figure in re.findall(FIGURE, _prose(page.read_text())):
            plain = figure.replace(",", "")
            if plain not in numbers:
                missing.setdefault(page.name, []).append(figure)
    assert missing == {}


def test_the_methods_table_is_the_registry():
    from draft_rag import methods

    section = _section(_read("README.md"), "## Methods", "## Results")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| `")]
    table = {r[0].strip("`"): r[1:] for r in rows}
    yes = {True: "yes", False: "no"}
    assert set(table) == set(methods.REGISTRY)
    for name, m in methods.REGISTRY.items():
        assert table[name] == [yes[m.shortens_prompt], yes[m.evicts_kv], yes[m.works_remote], m.summary], name


def test_pages_are_linked_from_the_readme_and_links_resolve():
    readme = _read("README.md")
    for page in (ROOT / "docs").glob("*.md"):
        assert f"(docs/{page.name})" in readme, page.name
    assert len(readme.splitlines()) <= 250
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *ROOT.glob("integrations/*/README.md")]:
        for target, anchor in re.findall(r"\]\(([^)#]*)(?:#([^)]*))?\)", page.read_text()):
            if "://" in target:
                continue
            linked = page.parent / target if target else page
            assert linked.exists(), (page.name, target)
            if anchor:  # GitHub's heading slugs: lower case, punctuation dropped, spaces as hyphens
                headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", linked.read_text(), flags=re.S), re.M)
                slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
                assert anchor in slugs, (page.name, target, anchor)


def test_integration_readmes_stand_alone_and_name_every_public_class():
    import importlib

    packages = {
        "langchain-draft-rag": "langchain_draft_rag",
        "llama-index-llms-draft-rag": "llama_index.llms.draft_rag",
        "llama-index-postprocessor-draft-rag": "llama_index.postprocessor.draft_rag",
    }
    for folder, module in packages.items():
        text = _read(f"integrations/{folder}/README.md")
        assert not re.search(r"\]\((?!https?://)[^)]*\)", text), folder  # no relative link out of the package
        assert "pip install -e" in text and not re.search(r"pip install (?!-e)['\"]?(langchain|llama-index)-", text)
        for name in importlib.import_module(module).__all__:
            assert f"`{name}`" in text, (folder, name)


def test_no_install_line_names_an_unpublished_distribution():
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *ROOT.glob("integrations/*/README.md")]:
        assert not re.search(UNPUBLISHED, page.read_text()), page.name
    for example in (ROOT / "examples").glob("*.py"):
        assert not re.search(UNPUBLISHED, example.read_text()), example.name


def _options(parser) -> dict[str, set[str]]:
    """Each subcommand's option strings (``models`` merges its actions')."""
    import argparse

    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = {}
    for name, sub in subs.choices.items():
        opts = {s for a in sub._actions for s in a.option_strings}
        for nested in (a for a in sub._actions if isinstance(a, argparse._SubParsersAction)):
            opts |= {s for p in nested.choices.values() for a in p._actions for s in a.option_strings}
        found[name] = opts | {s for a in parser._actions for s in a.option_strings}
    return found


def test_every_option_the_cli_page_names_exists():
    """docs/cli.md's synopsis names real options of each command, and its prose names options some command has."""
    from draft_rag.cli import build_parser

    options = _options(build_parser())
    page = _read("docs/cli.md")
    synopsis = re.search(r"```bash\n(.*?)```", page, re.S).group(1)
    command, named = None, {}
    for line in synopsis.splitlines():
        m = re.match(r"draft-rag (\w+)", line)
        command = m.group(1) if m else command
        named.setdefault(command, set()).update(re.findall(r"--[a-z][a-z-]*", line.split("#")[0]))
    assert set(named) >= {"compress", "generate", "eval", "bench", "cost", "demo", "models", "serve"}
    assert {c: sorted(n - options[c]) for c, n in named.items() if n - options[c]} == {}
    everywhere = set().union(*options.values())
    prose = re.sub(r"```.*?```", "", page, flags=re.S)
    assert sorted(set(re.findall(r"--[a-z][a-z-]*", prose)) - everywhere) == []


def test_the_readme_opens_with_the_two_set_up_commands_and_ci_runs_the_second():
    first = re.search(r"```bash\n(.*?)```", _read("README.md"), re.S).group(1)
    commands = [line for line in first.splitlines() if line and not line.startswith("#")]
    assert commands == [
        "bash scripts/setup.sh && .venv/bin/draft-rag demo",
        "bash scripts/setup.sh --test && .venv/bin/python -m pytest -q",
    ]
    assert commands[1] in _read(".ci/run")


def test_development_lists_every_script():
    page = _read("docs/development.md")
    listed = set(re.findall(r"^\| `([\w.]+)` \|", page, re.M))
    assert sorted(p.name for p in (ROOT / "scripts").iterdir() if p.suffix in (".py", ".sh")) == sorted(
        n for n in listed if (ROOT / "scripts" / n).exists()
    )


def test_llama_cpp_table_is_its_committed_output():
    """docs/serving.md's proxy-against-direct table is scripts/llama_cpp_proxy.py's table of its committed output."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from llama_cpp_proxy import table

    out = json.loads((ROOT / "docs/bench/llama_cpp_proxy.json").read_text())
    rows = table(out["summary"]).splitlines()
    assert len(rows) == 6 and all(row in _read("docs/serving.md").splitlines() for row in rows)
    direct, proxy = out["summary"][2:]  # ~8k: the proxy's upstream read a quarter of the tokens, and answered first
    assert (
        proxy["upstream_prompt_tokens"] < 0.3 * direct["upstream_prompt_tokens"] and proxy["ttft_s"] < direct["ttft_s"]
    )


def test_llama_cpp_load_row_is_its_committed_output():
    out = json.loads((ROOT / "docs/bench/serve_load_llama_cpp.json").read_text())
    row = next(line for line in _read("docs/serving.md").splitlines() if line.startswith(f"| {out['requests']} | "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    keys = ("requests", "answered", "refused_429", "refused_503", "lost", "median_kept_share", "median_engine_s")
    assert cells[:7] == [str(out[k]) for k in keys]
    assert cells[7:9] == [" / ".join(str(out[k][p]) for p in ("p50", "p90", "p99")) for k in ("ttft_s", "latency_s")]
    assert out["lost"] == 0 and out["proxy"]["upstream"].startswith("llama.cpp") and cells[9] == "0"
