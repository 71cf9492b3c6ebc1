"""Rewrite ``tests/data/golden.json`` from the code as it is, for an intended change of outputs only.

``tests/test_golden.py`` compares the outputs with that file and never writes it; after this script, review the
diff of the file before committing it.

    python scripts/regold.py            # writes tests/data/golden.json
    python scripts/regold.py --check    # exits 1 if the file would change (what the test checks, as a diff count)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="write nothing; report which keys would change")
    args = p.parse_args()
    from conftest import tiny_model
    from test_golden import GOLDEN, _same, golden_outputs, write_prompt

    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny-llama"
        lm = tiny_model("llama")
        lm.model.save_pretrained(tiny)
        lm.tokenizer.save_pretrained(tiny)
        got = golden_outputs(str(tiny), write_prompt(Path(tmp) / "p.txt"))
    want = json.loads(GOLDEN.read_text())
    changed = sorted(k for k in got.keys() | want.keys() if k not in got or k not in want or not _same(got[k], want[k]))
    print(f"{len(changed)} of {len(got)} outputs differ from {GOLDEN.name}: {changed}")
    if not args.check and changed:
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
