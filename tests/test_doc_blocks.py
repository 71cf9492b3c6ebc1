"""Every ```python block of README.md, docs/*.md and the integration READMEs runs, offline, on the built-in models.

A block whose fence is preceded by ``<!-- requires: gpu -->`` or ``<!-- requires: network -->`` is not run; it is
compiled, its imports are resolved and the keyword arguments of every call to an imported name are checked against
that name's signature (so a misspelt parameter fails here too). Runnable blocks get the same static check, then run
in a fresh namespace each, in a temporary working directory.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!--\s*requires:\s*([\w, ]+?)\s*-->")
KINDS = {"gpu", "network"}


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("integrations/*/README.md"))]


def blocks(path: Path) -> list[tuple[int, str, set[str]]]:
    """(line of the fence, code, requirements) for each ```python block of ``path``."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, j = i, i + 1
            while lines[j].strip() != "```":
                j += 1
            before = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
            m = MARKER.search(before)
            needs = {s.strip() for s in m.group(1).split(",")} if m else set()
            found.append((start + 1, "\n".join(lines[start + 1 : j]) + "\n", needs))
            i = j
        i += 1
    return found


ALL = [(p, line, code, needs) for p in doc_files() for line, code, needs in blocks(p)]
IDS = [f"{p.relative_to(ROOT)}:{line}" for p, line, _, _ in ALL]


def imported_names(tree: ast.AST) -> dict[str, object]:
    """Import every module the block imports; map each bound name to its object."""
    bound: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                module = importlib.import_module(a.name)
                if a.asname:
                    bound[a.asname] = module
                else:
                    bound[a.name.split(".")[0]] = importlib.import_module(a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for a in node.names:
                obj = getattr(module, a.name, None)
                if obj is None:
                    obj = importlib.import_module(f"{node.module}.{a.name}")
                bound[a.asname or a.name] = obj
    return bound


def _resolve(expr: ast.AST, bound: dict[str, object]):
    if isinstance(expr, ast.Name):
        return bound.get(expr.id)
    if isinstance(expr, ast.Attribute):
        base = _resolve(expr.value, bound)
        return getattr(base, expr.attr, None) if base is not None else None
    return None


def bad_keywords(code: str) -> list[str]:
    """Keyword arguments of calls to imported names (``X(...)``, ``mod.X(...)``) that X's signature refuses."""
    tree = ast.parse(code)
    bound = imported_names(tree)
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        target = _resolve(node.func, bound)
        if target is None or not callable(target):
            continue
        try:
            sig = inspect.signature(target)
        except (TypeError, ValueError):
            continue
        params = sig.parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            continue
        names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if hasattr(target, "model_fields"):  # pydantic: a field may also be given by its alias
            names |= {f.alias for f in target.model_fields.values() if f.alias}
        if isinstance(target, type):  # an alias a class handles itself is one of its attributes (a property)
            names |= {k.arg for k in node.keywords if k.arg and hasattr(target, k.arg)}
        bad += [f"{ast.unparse(node.func)}({k.arg}=...)" for k in node.keywords if k.arg and k.arg not in names]
    return bad


def test_the_docs_have_blocks_and_only_known_markers():
    assert len(ALL) >= 20
    assert all(needs <= KINDS for *_, needs in ALL), [(i, n) for i, (*_, n) in zip(IDS, ALL) if not n <= KINDS]
    runnable = [i for i, (*_, needs) in zip(IDS, ALL) if not needs]
    assert len(runnable) >= len(ALL) // 2, "most blocks must run"
    for page in ("README.md", "docs/python-api.md", "docs/langchain.md", "docs/llamaindex.md"):
        assert any(i.startswith(page + ":") for i in runnable), page


def test_a_wrong_parameter_name_is_caught():
    assert bad_keywords("from draft_rag import SpecPCConfig\nSpecPCConfig(windowsize=8)\n") == [
        "SpecPCConfig(windowsize=...)"
    ]
    assert bad_keywords("from langchain_draft_rag import ChatDraftCompressed\nChatDraftCompressed(max_new_tokens=8)\n")
    assert bad_keywords("import draft_rag\ndraft_rag.DraftEngine(budget=3)\n") == ["draft_rag.DraftEngine(budget=...)"]
    assert not bad_keywords("from draft_rag import SpecPCConfig\nSpecPCConfig(window_size=8, ratio=0.5)\n")


@pytest.mark.parametrize(("path", "line", "code", "needs"), ALL, ids=IDS)
def test_block_compiles_imports_and_names_real_parameters(path, line, code, needs):
    compile(code, f"{path}:{line}", "exec")
    assert bad_keywords(code) == []


RUN = [a for a in ALL if not a[3]]


@pytest.mark.slow
@pytest.mark.parametrize(("path", "line", "code", "needs"), RUN, ids=[f"{p.relative_to(ROOT)}:{n}" for p, n, *_ in RUN])
def test_block_runs(path, line, code, needs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = io.StringIO()
    namespace = {"__name__": "__doc_block__"}
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{path}:{line}", "exec"), namespace)  # the docs' own code
