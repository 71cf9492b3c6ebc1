"""LongLLMLingua (the real ``llmlingua`` 0.2.2 package) in a side environment, as a prompt-compression peer.

Why a side environment: llmlingua 0.2.2 passes tuple ``past_key_values`` and fails on transformers >= 4.47,
while draft-rag needs transformers 5. ``ensure_env`` creates ``$DRAFT_RAG_CACHE/llmlingua-env`` once:
``python -m venv`` + ``pip install torch==2.13.0 transformers==4.44.2 llmlingua==0.2.2``. The same draft
model is handed to it as a local folder, rewritten for transformers 4.44 (``compat_model_dir``: flat
``rope_theta``, a ``PreTrainedTokenizerFast`` tokenizer config, merges in the older string form; weights
are symlinked). OpenAI's tokenizer, which llmlingua fetches when constructed, is replaced by the small
LM's own tokenizer for counting (see ``llmlingua_worker.py``), so budgets are in draft tokens, as SpecPC's.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import venv
from pathlib import Path

from ..builtins import cache_dir
from ..models import resolve

logger = logging.getLogger(__name__)

PACKAGES = ("torch==2.13.0", "transformers==4.44.2", "llmlingua==0.2.2")
WORKER = Path(__file__).with_name("llmlingua_worker.py")


class LLMLinguaUnavailable(RuntimeError):
    """The side environment or the worker could not be set up; the message says why."""


def env_dir() -> Path:
    return cache_dir() / "llmlingua-env"


def env_python(env: Path | None = None) -> Path:
    return (env or env_dir()) / "bin" / "python"


def ensure_env(env: Path | None = None) -> Path:
    """Create the side environment once (needs PyPI); returns its python."""
    env = env or env_dir()
    python = env_python(env)
    marker = env / ".draft-rag-ready"
    if marker.exists():
        return python
    logger.info("creating the LongLLMLingua side environment in %s (one-off, a few minutes)", env)
    try:
        venv.EnvBuilder(with_pip=True, clear=env.exists()).create(env)
        cmd = [str(python), "-m", "pip", "install", "-q", *PACKAGES]
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise LLMLinguaUnavailable(f"could not create {env}: {exc}") from exc
    if done.returncode != 0:
        raise LLMLinguaUnavailable(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-800:]}")
    marker.write_text(" ".join(PACKAGES) + "\n")
    return python


def compat_model_dir(model_ref: str, out_root: Path | None = None) -> Path:
    """A transformers-4.44-readable view of a local draft checkpoint (symlinked weights, rewritten configs)."""
    src = Path(resolve(model_ref))
    if not (src / "config.json").exists():
        raise LLMLinguaUnavailable(f"draft {model_ref!r} is not a local model folder with config.json")
    out = (out_root or env_dir() / "models") / src.name
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in ("config.json", "tokenizer_config.json", "tokenizer.json") and f.is_file():
            link = out / f.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(f.resolve())
    config = json.loads((src / "config.json").read_text())
    rope = config.pop("rope_parameters", None) or {}
    if "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "default") != "default":
        config["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    config["torch_dtype"] = config.pop("dtype", "float32")
    (out / "config.json").write_text(json.dumps(config))
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    # decode must give back the text (transformers 4.44 cleans spaces before punctuation unless told not to; SmolLM2's
    # own config turns it off, transformers 5 does not clean by default): llmlingua asserts the round trip
    tok_cfg["clean_up_tokenization_spaces"] = False
    for k in ("backend", "is_local", "local_files_only"):
        tok_cfg.pop(k, None)
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    tok = json.loads((src / "tokenizer.json").read_text())
    merges = tok.get("model", {}).get("merges")
    if merges and isinstance(merges[0], list):
        tok["model"]["merges"] = [" ".join(m) for m in merges]
    (out / "tokenizer.json").write_text(json.dumps(tok))
    return out


class LLMLinguaClient:
    """One long-lived worker process holding LongLLMLingua with the draft model as its small LM.

    ``tokenizer`` (the draft's, in this process) measures budgets; ``budget``/``ratio`` mean what they
    mean for SpecPC: ``budget`` tokens kept of instruction + context + question, protected parts included;
    ``ratio`` of the context kept, the protected parts on top.
    """

    def __init__(self, draft_ref: str, tokenizer, python: Path | None = None):
        python = python or ensure_env()
        model = compat_model_dir(draft_ref)
        import torch

        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": str(torch.get_num_threads()),
        }  # the worker uses as many threads as we do
        self.tokenizer = tokenizer
        self.proc = subprocess.Popen(
            [str(python), "-P", str(WORKER), str(model)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        first = self._read()
        if "error" in first:
            self.close()
            raise LLMLinguaUnavailable(f"llmlingua worker could not start: {first['error']}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise LLMLinguaUnavailable(f"llmlingua worker exited (code {self.proc.poll()})")
        return json.loads(line)

    def _ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"llmlingua failed: {reply['error']}")
        return reply

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def compress(
        self,
        context: str | list[str],
        *,
        instruction: str = "",
        question: str = "",
        budget: int | None = None,
        ratio: float | None = None,
    ) -> str:
        """LongLLMLingua-compressed context (documents joined by blank lines). ``question`` is required."""
        if not question:
            raise ValueError("LongLLMLingua needs a question to rank and compress by")
        docs = split_documents(context) if isinstance(context, str) else list(context)
        protected = self._count(instruction) + self._count(question)
        total = protected + sum(self._count(d) for d in docs)
        keep = budget if budget is not None else protected + round((ratio or 1.0) * (total - protected))
        target = max(1, keep - protected)
        return self._ask({"op": "compress", "context": docs, "question": question, "target_token": target})[
            "compressed"
        ]

    def rank(self, docs: list[str], question: str) -> list[float]:
        """LongLLMLingua's document scores (higher = more relevant to the question)."""
        return self._ask({"op": "rank", "context": docs, "question": question})["scores"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def split_documents(text: str, max_chars: int = 600) -> list[str]:
    """Consecutive lines grouped into documents of at most ~``max_chars`` (LongLLMLingua ranks documents)."""
    docs, cur = [], ""
    for line in text.split("\n"):
        if cur and len(cur) + len(line) + 1 > max_chars:
            docs.append(cur)
            cur = line
        else:
            cur = f"{cur}\n{line}" if cur else line
    if cur:
        docs.append(cur)
    return docs


def main() -> int:
    """``python -m draft_rag.bench.llmlingua``: create the side environment and print its python."""
    logging.basicConfig(level=logging.INFO)
    print(ensure_env())
    return 0


if __name__ == "__main__":
    sys.exit(main())
