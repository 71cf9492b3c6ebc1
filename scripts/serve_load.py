"""Load test for ``draft-rag serve`` on loopback: N concurrent streaming clients for a bounded time.

Starts the server as a subprocess on 127.0.0.1, warms it up, records its RSS, then runs ``--clients`` clients
that each send streaming chat requests back to back for ``--seconds``. Every request must end as a complete
stream (``data: [DONE]``) or a 429/503 refusal; anything else counts as lost. Afterwards it checks that the
server's RSS came back near its baseline and that SIGTERM shuts it down cleanly (uvicorn finishes, then
re-raises the signal: exit code -15). Prints one JSON object; exits 1 if a request was lost.

    python scripts/serve_load.py --target smollm2-135m-instruct --clients 32 --seconds 60 --filler 8
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

import httpx
import psutil

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The special magic number for ocean is 4728163. "
QUESTION = "What is the special magic number for ocean mentioned in the provided text?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "draft_rag.cli", "serve", "--target", args.target, "--port", str(port),
           "--max-queue", str(args.max_queue), "--queue-timeout", str(args.queue_timeout)]
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


async def one_request(http: httpx.AsyncClient, url: str, body: dict, out: dict) -> str:
    """Send one streaming request; count it under ok / 429 / 503 / lost and return that name."""
    t0 = time.perf_counter()
    first = None
    try:
        async with http.stream("POST", url, json=body) as r:
            lines = []
            async for line in r.aiter_lines():
                if line and first is None:
                    first = time.perf_counter() - t0
                if line:
                    lines.append(line)
        if r.status_code == 200 and lines and lines[-1] == "data: [DONE]":
            kind = "ok"
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


async def load(url: str, body: dict, clients: int, seconds: float) -> dict:
    out = {"ok": 0, "429": 0, "503": 0, "lost": 0, "ttft": [], "latency": [], "lost_detail": []}
    stop = time.monotonic() + seconds

    async def client(http):
        while time.monotonic() < stop:
            if await one_request(http, url, body, out) in ("429", "503"):
                await asyncio.sleep(0.1)  # a refused client backs off a little, as a real one would

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--max-queue", type=int, default=8)
    p.add_argument("--queue-timeout", type=float, default=10.0)
    p.add_argument("--filler", type=int, default=8, help="filler lines in the prompt (~24 tokens each)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--ratio", type=float, default=0.25, help="SpecPC ratio per request")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    args = p.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    text = FILLER * (args.filler // 2) + NEEDLE + FILLER * (args.filler - args.filler // 2)
    body = {"model": "draft-rag", "stream": True, "max_tokens": args.max_tokens,
            "messages": [{"role": "user", "content": text + QUESTION}],
            "draft_rag": {"method": "specpc", "ratio": args.ratio}}
    proc = start_server(args, port)
    try:
        warm = asyncio.run(load(url, body, clients=2, seconds=3))  # first requests allocate the steady state
        time.sleep(1)
        baseline = rss_mib(proc)
        peak = baseline
        t0 = time.perf_counter()
        task = load(url, body, args.clients, args.seconds)

        async def run_and_watch():
            nonlocal peak
            fut = asyncio.ensure_future(task)
            while not fut.done():
                peak = max(peak, rss_mib(proc))
                await asyncio.sleep(0.5)
            return fut.result()

        res = asyncio.run(run_and_watch())
        wall = time.perf_counter() - t0
        time.sleep(2)
        after = rss_mib(proc)
        queued = httpx.get(f"http://127.0.0.1:{port}/health").json()["queued"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "killed"
    total = res["ok"] + res["429"] + res["503"] + res["lost"]

    def med(xs):
        return round(statistics.median(xs), 3) if xs else None

    print(json.dumps({
        "target": args.target, "clients": args.clients, "seconds": round(wall, 1), "threads": args.threads,
        "max_queue": args.max_queue, "requests": total, "answered": res["ok"], "refused_429": res["429"],
        "refused_503": res["503"], "lost": res["lost"], "lost_detail": res["lost_detail"][:5], "warmup_answered": warm["ok"],
        "median_ttft_s": med(res["ttft"]), "median_latency_s": med(res["latency"]),
        "rss_baseline_mib": round(baseline, 1), "rss_peak_mib": round(peak, 1), "rss_after_mib": round(after, 1),
        "queued_after": queued, "sigterm_exit_code": code, "load_average": [round(x, 1) for x in os.getloadavg()]},
        indent=1))
    return 0 if res["lost"] == 0 and queued == 0 and code in (0, -signal.SIGTERM) else 1


if __name__ == "__main__":
    sys.exit(main())
