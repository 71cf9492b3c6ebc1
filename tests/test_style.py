"""House style enforced by tools: ruff's lint and format checks (configured in pyproject.toml) on the whole tree."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    if shutil.which("ruff", path=str(Path(sys.executable).parent)):
        return [str(Path(sys.executable).parent / "ruff")]
    pytest.importorskip("ruff", reason="ruff is in the dev extra (scripts/setup.sh installs it)")
    return [sys.executable, "-m", "ruff"]


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff(args):
    run = subprocess.run(_ruff() + args, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
