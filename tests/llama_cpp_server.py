"""The live llama.cpp upstream for the tests: ``scripts/llama_cpp_upstream.py``, and the check that it is installed.

``scripts/setup.sh --test`` installs ``llama-cpp-python[server]``. Where it is missing the tests that need it fail
and say how to install it; they skip only when ``DRAFT_RAG_NO_LLAMA_CPP`` gives the reason.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from conftest import needs_setup

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from llama_cpp_upstream import LlamaCpp, llama_cpp_server  # noqa: E402

__all__ = ["LlamaCpp", "llama_cpp_server", "require_llama_cpp"]


def require_llama_cpp() -> None:
    """Fail (or skip, when ``DRAFT_RAG_NO_LLAMA_CPP`` says why) unless llama-cpp-python's server is installed."""
    present = all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "starlette_context", "sse_starlette"))
    needs_setup("llama.cpp", present, "run `bash scripts/setup.sh --test` (it installs llama-cpp-python[server])")
