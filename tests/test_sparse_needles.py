"""scripts/sparse_needles.py on a tiny model: ``--resume`` keeps an interrupted run's rows and runs the rest."""

import json
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_resume_runs_only_missing_prompts(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import sparse_needles

    out = tmp_path / "needles"
    kept = {"found": False, "answer": "from the earlier run", "prompt_tokens": 1, "prefill_seconds": 9.0,
            "total_seconds": 9.0, "sparse_layers": 0}  # fmt: skip
    earlier = {"length": 300, "depth": 0.1, "dense": kept, "sparse": kept}
    Path(f"{out}.json").write_text(json.dumps({"head": "earlier", "rows": [earlier]}))
    args = ["--target", tiny_dir, "--lengths", "300", "--depths", "0.1", "0.5", "--max-new-tokens", "2"]
    sparse_needles.main(args + ["--out", str(out), "--resume"])
    rows = json.loads(Path(f"{out}.json").read_text())["rows"]
    assert rows[0] == earlier and [(r["length"], r["depth"]) for r in rows] == [(300, 0.1), (300, 0.5)]
    assert rows[1]["dense"]["prompt_tokens"] > 250 and "sparse" in rows[1]
    table = [line for line in Path(f"{out}.txt").read_text().splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2 and table[2].startswith("| 1 | 10% |")  # header, rule, the two prompts

    sparse_needles.main(args + ["--out", str(out)])  # without --resume every prompt runs again
    assert json.loads(Path(f"{out}.json").read_text())["rows"][0]["dense"]["prompt_tokens"] > 250
