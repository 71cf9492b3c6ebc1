"""GPU recipe: a same-family pair, Qwen2.5-0.5B-Instruct drafting for Qwen2.5-7B-Instruct, with SpecKV and SpecPC.

    python examples/gpu_qwen.py --target Qwen/Qwen2.5-7B-Instruct --draft Qwen/Qwen2.5-0.5B-Instruct --tokens 16000

The target is spread over the GPUs by ``device_map="auto"`` in bf16, with ``flash_attention_2`` when ``flash-attn``
is installed (sdpa otherwise); the draft goes whole onto the first GPU. One long prompt (standard-library pydoc text
with one needle sentence) is answered four ways: full context, SpecPC keeping a quarter of the prompt, SpecKV
keeping 256 KV entries per layer and head, and SpecKV-PC (both). Each prints its answer, the tokens the target
read, its KV cache against the full one, and seconds per stage. Hub ids need the hub; local folders work anywhere.

Status: not run on a GPU (none was lent to this project). ``tests/test_examples.py`` compiles it, checks its imports
and call parameters, and runs its four method settings on the built-in SmolLM2 on CPU. Needs a CUDA build of torch
and, from a clone, ``pip install -e ".[gpu]"`` (flash-attn).
"""

from __future__ import annotations

import argparse
import importlib.util

import torch

from draft_rag import DraftEngine
from draft_rag.corpus import stdlib_documents

NEEDLE = "The secret code for the blue door is 7319465. "
QUESTION = "What is the secret code for the blue door?"


def long_context(tokenizer, n_tokens: int, depth: float = 0.5) -> str:
    """Standard-library documentation cut to about ``n_tokens`` target tokens, the needle at ``depth``."""
    text = "\n\n".join(d.text for d in stdlib_documents())
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]
    text = tokenizer.decode(ids)
    cut = int(len(text) * depth)
    return text[:cut] + "\n" + NEEDLE + "\n" + text[cut:]


def build_engine(target: str, draft: str) -> DraftEngine:
    attn = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    return DraftEngine(
        target,
        draft,
        target_kwargs={"device_map": "auto", "dtype": "bfloat16", "attn_implementation": attn},
        draft_kwargs={"device": "cuda:0", "dtype": "bfloat16", "attn_implementation": attn},
    )


RUNS = (
    ("full", {}),
    ("specpc", {"ratio": 0.25}),
    ("speckv", {"budget": 256}),
    ("speckv-pc", {"budget": 256, "pc_ratio": 0.25}),
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="Qwen/Qwen2.5-7B-Instruct")
    p.add_argument("--draft", default="Qwen/Qwen2.5-0.5B-Instruct")
    p.add_argument("--tokens", type=int, default=16000, help="prompt length in target tokens")
    p.add_argument("--max-new-tokens", type=int, default=32)
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this recipe needs a CUDA GPU")
    engine = build_engine(a.target, a.draft)
    context = long_context(engine.target.tokenizer, a.tokens)
    for method, budget in RUNS:
        torch.cuda.reset_peak_memory_stats()
        out = engine.generate(context, question=QUESTION, method=method, max_new_tokens=a.max_new_tokens, **budget)
        s = out.stats
        print(f"{method:<10} {out.text.strip()[:60]!r} | found: {'7319465' in out.text}")
        print(f"  {s.original_tokens} -> {s.prompt_tokens} prompt tokens | KV {s.kv_bytes / 2**20:.1f} of "
              f"{s.kv_bytes_full / 2**20:.1f} MiB | peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB | "
              + ", ".join(f"{k} {v:.2f}s" for k, v in s.seconds.items()))  # fmt: skip


if __name__ == "__main__":
    main()
