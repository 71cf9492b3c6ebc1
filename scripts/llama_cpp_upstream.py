"""llama.cpp's OpenAI-compatible server (llama-cpp-python) on the built-in SmolLM2 GGUF, as a real upstream.

Used by ``tests/test_llama_cpp.py``, ``scripts/llama_cpp_proxy.py`` and ``scripts/serve_load.py --llama-cpp``.
The server is llama-cpp-python's own (``python -m llama_cpp.server``), run with models loaded without llama.cpp's
extra buffer types (``use_extra_bufts=False``): on this project's development machine, whose CPU has AMX, the AMX
kernel those select for the Q4_1 weights crashes the server at its first request (SIGSEGV in
``ggml_backend_amx_mul_mat``). Run alone, it serves until interrupted:

    python scripts/llama_cpp_upstream.py --port 8080 --n-ctx 4096      # http://127.0.0.1:8080/v1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def smollm_gguf() -> str:
    """The built-in SmolLM2-135M-Instruct GGUF file (the one ``draft-rag models pull`` converts)."""
    from draft_rag.builtins import _builtin_gguf

    return str(_builtin_gguf("smollm2-135m-instruct"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LlamaCpp:
    """A running server: its ``/v1`` base URL, its process and the file its output goes to."""

    url: str
    proc: subprocess.Popen
    log: Path

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def wait_ready(server: LlamaCpp, seconds: float) -> None:
    """Poll ``/v1/models`` until it answers 200; raise with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited with {server.proc.returncode}:\n{server.log_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/models", timeout=2).status_code == 200:
                return
        time.sleep(0.1)  # polling a process we started for readiness
    raise RuntimeError(f"llama.cpp server not ready in {seconds} s:\n{server.log_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def llama_cpp_server(model: str | None = None, n_ctx: int = 4096, threads: int = 1, port: int = 0, ready_s=180):
    """Start ``python -m llama_cpp.server`` on 127.0.0.1 (a free port unless given); always stop it."""
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="llama_cpp_") as tmp:
        log = Path(tmp) / "server.log"
        cmd = [sys.executable, __file__, CHILD, "--model", model or smollm_gguf(), "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads)]
        cmd += ["--n_threads_batch", str(threads), "--n_batch", "512"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        server = LlamaCpp(f"http://127.0.0.1:{port}/v1", proc, log)
        try:
            wait_ready(server, ready_s)
            yield server
        finally:
            stop(proc)


CHILD = "--llama-cpp-server"  # argv[1] of the server process: the rest are llama_cpp.server's arguments


def serve(argv: list[str]) -> None:
    """``python -m llama_cpp.server ARGV``, its models loaded without llama.cpp's extra buffer types."""
    import runpy

    import llama_cpp.llama_cpp as api

    default = api.llama_model_default_params

    def without_extra_buffers():
        params = default()
        params.use_extra_bufts = False  # no AMX / repacked weight buffers (see the module's docstring)
        return params

    api.llama_model_default_params = without_extra_buffers
    sys.argv = ["llama_cpp.server", *argv]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


def main() -> int:
    if sys.argv[1:2] == [CHILD]:
        serve(sys.argv[2:])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--n-ctx", type=int, default=4096, help="context window of the server (SmolLM2 trained on 8192)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    with llama_cpp_server(n_ctx=args.n_ctx, threads=args.threads, port=args.port) as server:
        print(f"llama.cpp serving SmolLM2 at {server.url} (log {server.log}); Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
