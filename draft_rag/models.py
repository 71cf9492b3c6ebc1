"""Load draft and target models: local directory, hub id, .gguf file, or a built-in alias (``builtins``)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .builtins import BUILTIN_MODELS, check_safetensors, ensure

logger = logging.getLogger(__name__)


class LoadedModel(NamedTuple):
    """A causal LM and its tokenizer; ``name`` is what was asked for."""

    model: Any
    tokenizer: Any
    name: str = "model"


_loaded: dict[tuple, LoadedModel] = {}
_lock = threading.Lock()


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


def resolve(ref: str, force: bool = False) -> str:
    """Turn a built-in alias into its converted checkpoint folder (``builtins.ensure``); check other refs."""
    if ref in BUILTIN_MODELS:
        return ensure(ref, force)
    check_ref(ref)
    return ref


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
                check_safetensors(weights)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{weights} is truncated or corrupt ({exc})") from None


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
