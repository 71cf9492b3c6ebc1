"""Load test for ``draft-rag serve`` on loopback: N concurrent streaming clients for a bounded time.

Starts the server as a subprocess on 127.0.0.1, warms it up, records its RSS, then runs ``--clients`` clients
that each send streaming chat requests back to back for ``--seconds``. Every request must end as a complete
stream (``data: [DONE]``) or a 429/503 refusal; anything else counts as lost. Afterwards it checks that the
server's RSS came back near its baseline and that SIGTERM shuts it down cleanly (uvicorn finishes, then
re-raises the signal: exit code -15). Prints one JSON object; exits 1 if a request was lost.

    python scripts/serve_load.py --target smollm2-135m-instruct --clients 32 --seconds 45 --rounds 2

``--upstream URL`` load-tests a proxy (``draft-rag serve --upstream URL``, SmolLM2 draft) instead; ``--llama-cpp``
first starts llama.cpp's server on the built-in SmolLM2 GGUF (``scripts/llama_cpp_upstream.py``) as that upstream.
A stream that ends in an error event counts as lost. ``--distinct`` makes every prompt start differently (llama.cpp
reuses a repeated prompt's prefix, and the draft its context cache).

    python scripts/serve_load.py --llama-cpp --distinct --clients 4 --seconds 120 --max-tokens 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_cpp_upstream import llama_cpp_server  # noqa: E402

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The special magic number for ocean is 4728163. "
QUESTION = "What is the special magic number for ocean mentioned in the provided text?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int) -> subprocess.Popen:
    model = ["--upstream", args.upstream, "--draft", args.draft] if args.upstream else ["--target", args.target]
    cmd = [
        sys.executable,
        "-m",
        "draft_rag.cli",
        "serve",
        *model,
        "--port",
        str(port),
        "--max-queue",
        str(args.max_queue),
        "--queue-timeout",
        str(args.queue_timeout),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not come up within 300 s")


def rss_mib(proc: subprocess.Popen) -> float:
    return psutil.Process(proc.pid).memory_info().rss / 2**20


def engine_stats(headers, lines: list[str]) -> tuple[float, float]:
    """(engine seconds, kept share of the prompt) of one answer: from the last chunk's stats (local mode), or the
    proxy's stats header (its draft pass; the share of the draft's tokens it forwarded)."""
    if "x-draft-rag-stats" in headers:
        stats = json.loads(headers["x-draft-rag-stats"])
        seconds = stats.get("seconds", {})
        kept = stats.get("compressed_tokens", 1) / max(1, stats.get("original_tokens", 1))
        return seconds.get("total", sum(seconds.values())), kept
    stats = json.loads(lines[-2][6:])["draft_rag"]
    return stats["seconds"]["total"], stats["prompt_tokens"] / max(1, stats["original_tokens"])


async def one_request(http: httpx.AsyncClient, url: str, body: dict, out: dict) -> str:
    """Send one streaming request; count it under ok / 429 / 503 / lost and return that name."""
    t0 = time.perf_counter()
    first = None
    if out["distinct"]:
        out["sent"] += 1
        text = body["messages"][0]["content"]
        body = {**body, "messages": [{"role": "user", "content": f"Request {out['sent']}. {text}"}]}
    try:
        async with http.stream("POST", url, json=body) as r:
            lines = []
            async for line in r.aiter_lines():
                if line and first is None:
                    first = time.perf_counter() - t0
                if line:
                    lines.append(line)
        failed = any(line.startswith('data: {"error"') for line in lines)
        if r.status_code == 200 and lines and lines[-1] == "data: [DONE]" and not failed:
            kind = "ok"
            seconds, kept = engine_stats(r.headers, lines)
            out["engine"].append(seconds)
            out["kept"].append(kept)
            out["ttft"].append(first)
            out["latency"].append(time.perf_counter() - t0)
        else:
            kind = str(r.status_code) if r.status_code in (429, 503) else "lost"
            if kind == "lost":
                out["lost_detail"].append(f"status {r.status_code}, last line {lines[-1][:200] if lines else None!r}")
    except httpx.HTTPError as exc:
        kind = "lost"
        out["lost_detail"].append(f"{type(exc).__name__}: {exc}")
    out[kind] += 1
    return kind


async def load(url: str, body: dict, clients: int, seconds: float, backoff: float = 0.5, distinct=False) -> dict:
    out = {"ok": 0, "429": 0, "503": 0, "lost": 0, "ttft": [], "latency": [], "engine": [], "kept": []}
    out["lost_detail"] = []
    out.update(distinct=distinct, sent=0)
    stop = time.monotonic() + seconds

    async def client(http):
        while time.monotonic() < stop:
            if await one_request(http, url, body, out) in ("429", "503"):
                await asyncio.sleep(backoff)  # a refused client backs off, as the openai client does

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--upstream", metavar="URL", help="load-test a proxy in front of this OpenAI-compatible server")
    p.add_argument("--llama-cpp", action="store_true", help="start llama.cpp on SmolLM2's GGUF as the upstream")
    p.add_argument("--llama-ctx", type=int, default=2048, help="llama.cpp's context window (--llama-cpp)")
    p.add_argument("--draft", default="smollm2-135m-instruct", help="the proxy's draft (with --upstream)")
    p.add_argument("--distinct", action="store_true", help="every prompt starts with its own request number")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--max-queue", type=int, default=8)
    p.add_argument("--queue-timeout", type=float, default=10.0)
    p.add_argument("--filler", type=int, default=8, help="filler lines in the prompt (~24 tokens each)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--ratio", type=float, default=0.25, help="SpecPC ratio per request")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server (and llama.cpp's)")
    p.add_argument("--rounds", type=int, default=1, help="repeat the load, recording RSS after each round")
    p.add_argument("--backoff", type=float, default=0.5, help="seconds a refused client waits before its next request")
    return p.parse_args(argv)


def run_rounds(args, proc, url: str, body: dict) -> dict:
    """Warm up, then ``--rounds`` rounds of load; the counts summed, RSS before, at its peak and after each round."""
    warm = asyncio.run(load(url, body, clients=2, seconds=3, distinct=args.distinct))  # allocate the steady state
    time.sleep(1)  # let the warm-up's last frees settle before the RSS baseline
    baseline = rss_mib(proc)
    peak, after, rounds = baseline, [], []
    t0 = time.perf_counter()

    async def run_and_watch():
        nonlocal peak
        fut = asyncio.ensure_future(load(url, body, args.clients, args.seconds, args.backoff, args.distinct))
        while not fut.done():
            peak = max(peak, rss_mib(proc))
            await asyncio.sleep(0.5)
        return fut.result()

    for _ in range(args.rounds):  # RSS after each round: growing round over round would be a leak
        rounds.append(asyncio.run(run_and_watch()))
        time.sleep(2)
        after.append(round(rss_mib(proc), 1))
    res = {k: sum((r[k] for r in rounds), [] if isinstance(rounds[0][k], list) else 0) for k in rounds[0]}
    rss = {"rss_baseline_mib": round(baseline, 1), "rss_peak_mib": round(peak, 1), "rss_after_each_round_mib": after}
    return {**res, "warm": warm["ok"], "wall": time.perf_counter() - t0, "rss": rss}


def percentiles(xs: list[float]) -> dict:
    """50th, 90th and 99th percentile (nearest rank) of ``xs``, rounded; empty when there are none."""
    if not xs:
        return {}
    xs = sorted(xs)
    return {f"p{q}": round(xs[min(len(xs) - 1, max(0, -(-q * len(xs) // 100) - 1))], 3) for q in (50, 90, 99)}


def summary(args, res: dict, queued: int, code) -> dict:
    def med(xs):
        return round(statistics.median(xs), 3) if xs else None

    mode = {"upstream": "llama.cpp (SmolLM2 GGUF)" if args.llama_cpp else "given", "draft": args.draft}
    return {
        **({"proxy": mode} if args.upstream else {"target": args.target}),
        "clients": args.clients,
        "backoff_s": args.backoff,
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "distinct_prompts": args.distinct,
        "max_tokens": args.max_tokens,
        "wall_s": round(res["wall"], 1),
        "threads": args.threads,
        "max_queue": args.max_queue,
        "requests": res["ok"] + res["429"] + res["503"] + res["lost"],
        "answered": res["ok"],
        "refused_429": res["429"],
        "refused_503": res["503"],
        "lost": res["lost"],
        "lost_detail": res["lost_detail"][:5],
        "warmup_answered": res["warm"],
        "median_ttft_s": med(res["ttft"]),
        "median_latency_s": med(res["latency"]),
        "median_engine_s": med(res["engine"]),
        "median_kept_share": med(res["kept"]),
        "ttft_s": percentiles(res["ttft"]),
        "latency_s": percentiles(res["latency"]),
        **res["rss"],
        "queued_after": queued,
        "sigterm_exit_code": code,
        "load_average": [round(x, 1) for x in os.getloadavg()],
    }


def serve_and_load(args) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    text = FILLER * (args.filler // 2) + NEEDLE + FILLER * (args.filler - args.filler // 2)
    body = {
        "model": "draft-rag",
        "stream": True,
        "max_tokens": args.max_tokens,
        "temperature": 0.0,
        "messages": [{"role": "user", "content": text + QUESTION}],
        "draft_rag": {"method": "specpc", "ratio": args.ratio},
    }
    proc = start_server(args, port)
    try:
        res = run_rounds(args, proc, url, body)
        queued = httpx.get(f"http://127.0.0.1:{port}/health").json()["queued"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "killed"
    return summary(args, res, queued, code)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.llama_cpp:
        with llama_cpp_server(n_ctx=args.llama_ctx, threads=args.threads) as upstream:
            args.upstream = upstream.url
            out = serve_and_load(args)
    else:
        out = serve_and_load(args)
    print(json.dumps(out, indent=1))
    return 0 if out["lost"] == 0 and out["queued_after"] == 0 and out["sigterm_exit_code"] in (0, -15) else 1


if __name__ == "__main__":
    sys.exit(main())
