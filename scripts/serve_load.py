"""Load test for ``draft-rag serve`` on loopback: N concurrent streaming clients for a bounded time.

Starts the server as a subprocess on 127.0.0.1, warms it up, records its RSS, then runs ``--clients`` clients
that each send streaming chat requests back to back for ``--seconds``. Every request must end as a complete
stream (``data: [DONE]``) or a 429/503 refusal; anything else counts as lost. Afterwards it checks that the
server's RSS came back near its baseline and that SIGTERM shuts it down cleanly (uvicorn finishes, then
re-raises the signal: exit code -15). Prints one JSON object; exits 1 if a request was lost.

    python scripts/serve_load.py --target smollm2-135m-instruct --clients 32 --seconds 45 --rounds 2
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
    cmd = [
        sys.executable,
        "-m",
        "draft_rag.cli",
        "serve",
        "--target",
        args.target,
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
            out["engine"].append(json.loads(lines[-2][6:])["draft_rag"]["seconds"]["total"])
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


async def load(url: str, body: dict, clients: int, seconds: float, backoff: float = 0.5) -> dict:
    out = {"ok": 0, "429": 0, "503": 0, "lost": 0, "ttft": [], "latency": [], "engine": [], "lost_detail": []}
    stop = time.monotonic() + seconds

    async def client(http):
        while time.monotonic() < stop:
            if await one_request(http, url, body, out) in ("429", "503"):
                await asyncio.sleep(backoff)  # a refused client backs off, as the openai client does

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return out


def _parser() -> argparse.ArgumentParser:
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
    p.add_argument("--rounds", type=int, default=1, help="repeat the load, recording RSS after each round")
    p.add_argument("--backoff", type=float, default=0.5, help="seconds a refused client waits before its next request")
    return p


def _body(args) -> dict:
    """One streaming chat request: the needle among ``--filler`` lines, SpecPC at ``--ratio``."""
    text = FILLER * (args.filler // 2) + NEEDLE + FILLER * (args.filler - args.filler // 2)
    return {
        "model": "draft-rag",
        "stream": True,
        "max_tokens": args.max_tokens,
        "messages": [{"role": "user", "content": text + QUESTION}],
        "draft_rag": {"method": "specpc", "ratio": args.ratio},
    }


def _rounds(args, proc, url: str, body: dict) -> dict:
    """Warm the server up, then ``--rounds`` rounds of load watching its RSS; the counts summed over rounds."""
    warm = asyncio.run(load(url, body, clients=2, seconds=3))  # first requests allocate the steady state
    time.sleep(1)
    baseline = rss_mib(proc)
    peak, after, rounds = baseline, [], []
    t0 = time.perf_counter()

    async def run_and_watch():
        nonlocal peak
        fut = asyncio.ensure_future(load(url, body, args.clients, args.seconds, args.backoff))
        while not fut.done():
            peak = max(peak, rss_mib(proc))
            await asyncio.sleep(0.5)
        return fut.result()

    for _ in range(args.rounds):  # RSS after each round: growing round over round would be a leak
        rounds.append(asyncio.run(run_and_watch()))
        time.sleep(2)
        after.append(round(rss_mib(proc), 1))
    wall = time.perf_counter() - t0
    res = {k: sum((r[k] for r in rounds), [] if isinstance(rounds[0][k], list) else 0) for k in rounds[0]}
    return dict(res=res, warm=warm, baseline=baseline, peak=peak, after=after, wall=wall)


def _stop(proc):
    """SIGTERM the server; its exit code, or "killed" when it did not stop within a minute."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return "killed"


def _report(args, m: dict, queued: int, code) -> dict:
    """The printed summary of a run (``_rounds``' figures, the queue after it, the server's exit code)."""
    res, warm, baseline, peak, after, wall = (m[k] for k in ("res", "warm", "baseline", "peak", "after", "wall"))
    total = res["ok"] + res["429"] + res["503"] + res["lost"]

    def med(xs):
        return round(statistics.median(xs), 3) if xs else None

    return {
        "target": args.target,
        "clients": args.clients,
        "backoff_s": args.backoff,
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "wall_s": round(wall, 1),
        "threads": args.threads,
        "max_queue": args.max_queue,
        "requests": total,
        "answered": res["ok"],
        "refused_429": res["429"],
        "refused_503": res["503"],
        "lost": res["lost"],
        "lost_detail": res["lost_detail"][:5],
        "warmup_answered": warm["ok"],
        "median_ttft_s": med(res["ttft"]),
        "median_latency_s": med(res["latency"]),
        "median_engine_s": med(res["engine"]),
        "rss_baseline_mib": round(baseline, 1),
        "rss_peak_mib": round(peak, 1),
        "rss_after_each_round_mib": after,
        "queued_after": queued,
        "sigterm_exit_code": code,
        "load_average": [round(x, 1) for x in os.getloadavg()],
    }


def main() -> int:
    args = _parser().parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    proc = start_server(args, port)
    try:
        measured = _rounds(args, proc, url, _body(args))
        queued = httpx.get(f"http://127.0.0.1:{port}/health").json()["queued"]
    finally:
        code = _stop(proc)
    print(json.dumps(_report(args, measured, queued, code), indent=1))
    return 0 if measured["res"]["lost"] == 0 and queued == 0 and code in (0, -signal.SIGTERM) else 1


if __name__ == "__main__":
    sys.exit(main())
