"""Clocks and a memory probe for the cost bench: decoder-layer and attention-kernel seconds, peak memory."""

from __future__ import annotations

import os
import threading
import time

import torch

from ...generation import Prefilled
from ...scoring import cache_kwarg


def scale(total: float, in_layers: float, measured: int, layers: int) -> float:
    """Extrapolate to ``layers`` layers a figure measured on ``measured`` layers, ``in_layers`` of it spent in them."""
    return total + (layers - measured) * in_layers / measured


class LayerClock:
    """Seconds spent inside a model's decoder layers (public forward hooks), to scale a slice to full depth."""

    def __init__(self, model):
        self.layers, self.device, self.seconds, self._t = model.model.layers, model.device, 0.0, 0.0

    def _pre(self, module, args):
        sync(self.device)
        self._t = time.perf_counter()

    def _post(self, module, args, output):
        sync(self.device)
        self.seconds += time.perf_counter() - self._t

    def __enter__(self):
        self._handles = [
            h
            for layer in self.layers
            for h in (layer.register_forward_pre_hook(self._pre), layer.register_forward_hook(self._post))
        ]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()


class AttentionClock:
    """An ``attention.Kernel`` that runs the model's own kernel and adds up its seconds."""

    def __init__(self, device):
        self.device, self.seconds = device, 0.0

    def __call__(self, own, *args, **kwargs):
        sync(self.device)
        t0 = time.perf_counter()
        out = own(*args, **kwargs)
        sync(self.device)
        self.seconds += time.perf_counter() - t0
        return out


def sync(device) -> None:
    """Wait for the device's queued work (CUDA), so a clock reads what ran."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


class PeakMemory:
    """Peak memory above the level at entry, in bytes: CUDA allocator peak, else sampled RSS (Linux)."""

    def __init__(self, device):
        self.cuda = str(device).startswith("cuda")
        self.peak = 0

    @staticmethod
    def _rss() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # no /proc: peak unknown (nan), never a made-up number
            return float("nan")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base, self.top, self._stop = self._rss(), self._rss(), threading.Event()

        def sample():
            while not self._stop.wait(0.005):
                self.top = max(self.top, self._rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.top, self._rss()) - self.base


@torch.no_grad()
def decode(model, state: Prefilled, n_tokens: int) -> float:
    """Greedy-decode ``n_tokens`` after ``state`` whatever they are (no EOS stop); seconds per decode step."""
    ck, logits, pos = cache_kwarg(model), state.logits, state.next_position
    t0 = time.perf_counter()
    for _ in range(n_tokens - 1):
        tok = logits.argmax().view(1, 1)
        out = model(
            input_ids=tok, position_ids=torch.tensor([[pos]], device=model.device), use_cache=True, **{ck: state.cache}
        )
        logits, pos = out.logits[0, -1], pos + 1
    int(logits.argmax())
    return (time.perf_counter() - t0) / max(1, n_tokens - 1)


def timed(fn, device):
    """``(fn(), seconds)``, the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0
