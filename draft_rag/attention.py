"""Window-attention capture through transformers' public ``AttentionInterface``.

``attach(model)`` switches the model to a registered wrapper of its own kernel (sdpa, eager or flash).
The wrapped kernel still computes every layer's output; while an observer is active (``observe``), the
wrapper also hands it the layer's query/key tensors so that it can score the last few queries against
all keys: at most ``W x N`` probabilities per head, never ``N x N``. While a kernel is active
(``use_kernel``), it computes the layers' outputs instead, given the model's own kernel to fall back on.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from contextvars import ContextVar

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

PREFIX = "draft_rag+"
Observer = Callable[..., None]  # (module, query, key, attention_mask, kwargs) -> None
Kernel = Callable[..., tuple]  # (base_kernel, module, query, key, value, attention_mask, **kwargs) -> (out, weights)
_observer: ContextVar[Observer | None] = ContextVar("draft_rag_observer", default=None)
_kernel: ContextVar[Kernel | None] = ContextVar("draft_rag_kernel", default=None)


def _base_kernel(name: str, module) -> Callable:
    if name == "eager":  # each modeling file defines its own eager function
        return importlib.import_module(type(module).__module__).eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[name]


def _register(base: str) -> str:
    name = PREFIX + base
    if name in ALL_ATTENTION_FUNCTIONS:
        return name

    def attention(module, query, key, value, attention_mask, **kwargs):
        kernel, own = _kernel.get(), _base_kernel(base, module)
        if kernel is None:
            out = own(module, query, key, value, attention_mask, **kwargs)
        else:
            out = kernel(own, module, query, key, value, attention_mask, **kwargs)
        observer = _observer.get()
        if observer is not None:
            observer(module, query, key, attention_mask, kwargs)
        return out

    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name


def implementation(model) -> str:
    """The attention implementation ``model`` runs (transformers keeps it only in the config's private field)."""
    return model.config._attn_implementation


def attach(model) -> None:
    """Route ``model``'s attention through the capturing wrapper (idempotent; outputs unchanged)."""
    current = implementation(model)
    if current.startswith(PREFIX):
        return
    if current != "eager" and current not in ALL_ATTENTION_FUNCTIONS:
        raise ValueError(f"attention implementation {current!r} cannot be wrapped for capture")
    model.set_attn_implementation(_register(current))


@contextlib.contextmanager
def _active(model, var: ContextVar, value):
    """``model`` attached and ``var`` set to ``value`` inside the ``with`` block."""
    attach(model)
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def observe(model, observer: Observer):
    """Call ``observer`` from every attention layer of ``model`` inside the ``with`` block."""
    return _active(model, _observer, observer)


def use_kernel(model, kernel: Kernel):
    """Compute every attention layer of ``model`` with ``kernel`` inside the ``with`` block."""
    return _active(model, _kernel, kernel)


def window_probs(
    query: torch.Tensor, key: torch.Tensor, attention_mask, kwargs: dict, window: int, scaling: float | None = None
) -> torch.Tensor:
    """Softmax probabilities (fp32) of the last ``window`` queries over all keys.

    ``query`` is ``[B, Hq, Q, D]``, ``key`` is ``[B, Hkv, K, D]``. Returns ``[B, Hkv, G, W, K]`` with
    ``G = Hq // Hkv`` (the GQA group), masked as the layer's own attention is (causal, sliding window).
    """
    b, hq, q_len, d = query.shape
    hkv, k_len = key.shape[1], key.shape[2]
    w = min(window, q_len)
    q = query[:, :, -w:].reshape(b, hkv, hq // hkv, w, d)
    scale = scaling if scaling is not None else kwargs.get("scaling") or d**-0.5
    # In the keys' own dtype (no fp32 copy of all keys), as the layer's attention does; fp32 from the logits on.
    logits = torch.einsum("bhgwd,bhkd->bhgwk", q, key).float().mul_(scale)
    softcap = kwargs.get("softcap")
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    if attention_mask is None and not kwargs.get("sliding_window"):
        # plain causal: only the last w keys can be in a window query's future
        future = torch.ones(w, w, dtype=torch.bool, device=query.device).triu_(1)
        logits[..., k_len - w :].masked_fill_(future, float("-inf"))
    else:
        allowed = _allowed(attention_mask, b, q_len, k_len, w, kwargs.get("sliding_window"), query.device)
        logits.masked_fill_(~allowed[:, None, None], float("-inf"))
    return torch.softmax(logits, dim=-1).nan_to_num_(0.0)


def _allowed(attention_mask, b: int, q_len: int, k_len: int, w: int, sliding_window, device) -> torch.Tensor:
    """``[B, W, K]`` boolean: which keys each of the last ``w`` queries may see."""
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4:
        rows = attention_mask[:, 0, -w:, :k_len]
        allowed = rows if rows.dtype == torch.bool else rows > torch.finfo(rows.dtype).min / 2
        return allowed.expand(b, w, k_len)
    pos = torch.arange(k_len - w, k_len, device=device)[:, None]
    keys = torch.arange(k_len, device=device)[None, :]
    allowed = keys <= pos
    if sliding_window:
        allowed &= pos - keys < sliding_window
    return allowed.expand(b, w, k_len)
