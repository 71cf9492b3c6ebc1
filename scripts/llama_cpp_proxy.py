"""Through real parts: the openai client -> ``draft-rag serve --upstream`` -> llama.cpp, against client -> llama.cpp.

Starts llama.cpp's server (llama-cpp-python, ``scripts/llama_cpp_upstream.py``) on the built-in SmolLM2 GGUF and
``draft-rag serve --upstream`` in front of it (SmolLM2 draft, SpecPC at ``--ratio``), both subprocesses on
127.0.0.1 with ``--threads`` threads. Per length it streams ``--requests`` RAG prompts straight to llama.cpp and as
many through the proxy, one at a time, greedy, after one untimed short request down each path (the first calls
load weights and build graphs). Every prompt is distinct from its first context token (standard
library documentation passages in a fresh random order): llama.cpp reuses a repeated prompt's prefix.

Per request: the prompt tokens llama.cpp evaluated and its prompt-eval seconds (from its own timing lines), time
to first token, end-to-end seconds; through the proxy also the draft pass's seconds (``x-draft-rag-stats``). The
proxy's overhead beside the draft pass is time to first token less draft seconds less llama.cpp's prompt eval,
against the same remainder straight to llama.cpp. Prints one JSON object (rows, then medians per length and path).

    OMP_NUM_THREADS=1 nice python scripts/llama_cpp_proxy.py --lengths 2000 7800 --requests 2 --max-tokens 8 \\
        > docs/bench/llama_cpp_proxy.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_cpp_upstream import free_port, llama_cpp_server, stop  # noqa: E402

PROMPT_EVAL = re.compile(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")


def rag_prompts(tokenizer, length: int, count: int, seed: int) -> list[list[dict]]:
    """``count`` distinct chat requests of about ``length`` context tokens each, from the stdlib docs corpus."""
    from draft_rag.corpus import chunk_documents, stdlib_documents

    chunks = chunk_documents(stdlib_documents(), max_chars=800)
    sizes = [len(tokenizer.encode(c.text, add_special_tokens=False)) for c in chunks]
    rng, out = random.Random(seed), []
    for _ in range(count):
        picked, total = [], 0
        for j in rng.sample(range(len(chunks)), len(chunks)):
            if total + sizes[j] > length:
                continue
            picked.append(j)
            total += sizes[j]
        module = chunks[picked[len(picked) // 2]].metadata["source"].removeprefix("pydoc:")
        context = "\n\n".join(chunks[j].text for j in picked)
        out.append(
            [
                {"role": "system", "content": "Answer from the context.\n\nContext:\n" + context},
                {"role": "user", "content": f"Which functions does the {module} module provide? Name one."},
            ]
        )
    return out


def start_proxy(upstream: str, port: int, ratio: float, threads: int) -> subprocess.Popen:
    """``draft-rag serve --upstream`` as a process; returns once ``/health`` answers."""
    cmd = [sys.executable, "-m", "draft_rag.cli", "serve", "--upstream", upstream, "--port", str(port)]
    cmd += ["--ratio", str(ratio), "--context-cache-mb", "0", "--max-tokens", "256"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"draft-rag serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)  # polling a process we started for readiness
    stop(proc)
    raise RuntimeError("draft-rag serve did not come up in 300 s")


def upstream_eval(server, seen: int, wait_s: float = 30.0) -> tuple[float, int, int]:
    """llama.cpp's timing line of the request after the first ``seen``: (prompt-eval seconds, tokens, lines now)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        lines = PROMPT_EVAL.findall(server.log_text())
        if len(lines) > seen:
            ms, tokens = lines[seen]
            return float(ms) / 1000, int(tokens), seen + 1
        time.sleep(0.05)  # llama.cpp prints its timings just after the last chunk
    raise RuntimeError("llama.cpp printed no timing line for the request")


def timed(client: openai.OpenAI, messages: list[dict], max_tokens: int, extra: dict | None) -> dict:
    """Stream one greedy chat request: time to first content token, end-to-end seconds, draft-rag's stats."""
    t0, first, text = time.perf_counter(), None, []
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2", messages=messages, max_tokens=max_tokens, temperature=0.0, stream=True, extra_body=extra
    )
    for chunk in raw.parse():
        piece = chunk.choices[0].delta.content if chunk.choices else None
        if piece:
            first = first if first is not None else time.perf_counter() - t0
            text.append(piece)
    row = {"ttft_s": round(first, 3) if first is not None else None, "e2e_s": round(time.perf_counter() - t0, 3)}
    if header := raw.headers.get("x-draft-rag-stats"):
        stats = json.loads(header)
        row.update(
            original_tokens=stats.get("original_tokens"),
            compressed_tokens=stats.get("compressed_tokens"),
            draft_s=round(sum(stats.get("seconds", {}).values()), 3),
        )
    return {**row, "answer_chars": len("".join(text))}


def measure(server, paths: dict, messages: list[dict], max_tokens: int, path: str, seen: int) -> tuple[dict, int]:
    """One request down ``path`` ("direct" or "proxy"), with llama.cpp's own count and time of its prompt."""
    client, extra = paths[path]
    row = {"path": path, **timed(client, messages, max_tokens, extra)}
    eval_s, tokens, seen = upstream_eval(server, seen)
    row.update(upstream_prompt_tokens=tokens, upstream_prompt_eval_s=round(eval_s, 3))
    row["rest_s"] = round(row["ttft_s"] - eval_s - row.get("draft_s", 0.0), 3)
    return row, seen


def run(args, tokenizer) -> list[dict]:
    """Both servers up; per length, distinct prompts alternately direct and through the proxy."""
    rows, seen = [], 0
    with llama_cpp_server(n_ctx=args.n_ctx, threads=args.threads) as server:
        port = free_port()
        proxy = start_proxy(server.url, port, args.ratio, args.threads)
        try:
            paths = {
                "direct": (openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=900), None),
                "proxy": (
                    openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=900),
                    {"draft_rag": {"ratio": args.ratio}},
                ),
            }
            warm = rag_prompts(tokenizer, 300, 1, seed=args.seed - 1)[0]  # first calls load weights and graphs
            for path in ("direct", "proxy"):
                seen = measure(server, paths, warm, 2, path, seen)[1]
            for length in args.lengths:
                prompts = rag_prompts(tokenizer, length, 2 * args.requests, seed=args.seed + length)
                for i, messages in enumerate(prompts):
                    row, seen = measure(server, paths, messages, args.max_tokens, ("direct", "proxy")[i % 2], seen)
                    rows.append({"length": length, "request": i // 2, **row})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        finally:
            stop(proxy)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Medians per length and path; the proxy's overhead beside the draft pass against direct's remainder."""
    out = []
    for length in sorted({r["length"] for r in rows}):
        for path in ("direct", "proxy"):
            group = [r for r in rows if r["length"] == length and r["path"] == path]
            keys = ("upstream_prompt_tokens", "ttft_s", "e2e_s", "upstream_prompt_eval_s", "rest_s", "draft_s")
            med = {k: round(statistics.median(r[k] for r in group), 3) for k in keys if k in group[0]}
            out.append({"length": length, "path": path, "requests": len(group), **med})
        direct, proxy = out[-2], out[-1]
        proxy["overhead_beside_draft_s"] = round(proxy["rest_s"] - direct["rest_s"], 3)
    return out


def table(summary_rows: list[dict]) -> str:
    """The medians as a markdown table (what docs/serving.md quotes); the last column is ``rest_s``."""
    lines = [
        "| context tokens | path | requests | prompt tokens llama.cpp read | llama.cpp prompt eval s | draft pass s "
        "| time to first token s | end-to-end s | first token less draft and prompt eval s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary_rows:
        lines.append(
            f"| {r['length']} | {r['path']} | {r['requests']} | {r['upstream_prompt_tokens']:.0f} "
            f"| {r['upstream_prompt_eval_s']} | {r.get('draft_s', '-')} | {r['ttft_s']} | {r['e2e_s']} "
            f"| {r['rest_s']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[2000, 7800], help="context tokens per prompt")
    p.add_argument("--requests", type=int, default=2, help="prompts per length and path")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--ratio", type=float, default=0.25, help="SpecPC ratio of the proxy")
    p.add_argument("--n-ctx", type=int, default=8192, help="llama.cpp's context window")
    p.add_argument("--threads", type=int, default=1, help="threads of llama.cpp and of the proxy's torch")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from transformers import AutoTokenizer

    from draft_rag.builtins import ensure

    tokenizer = AutoTokenizer.from_pretrained(ensure("smollm2-135m-instruct"))
    t0 = time.perf_counter()
    rows = run(args, tokenizer)
    result = {"args": vars(args), "wall_s": round(time.perf_counter() - t0, 1), "summary": summary(rows), "rows": rows}
    result["load_average"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(result, indent=1))
    print(table(result["summary"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
