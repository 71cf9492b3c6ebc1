"""The draft's KV cache for prompt prefixes that repeat: follow-up questions over the same retrieved context.

A draft pass reads ``head + context + tail`` (template start and instruction, the retrieved text, then the
question). The KV of everything up to ``window_size`` tokens before the end of the context does not depend on the
question, so it is kept here, keyed by those token ids; a later pass over the same context runs only the last
window of context plus its own question through the draft. Every pass splits at the same place whether it hits
or not, so a follow-up's scores equal a cold run's bit for bit. SpecKV's lookahead drafting reads its prompt the
same way (``scoring.cached_prefix``), so it shares these entries. Entries are evicted least recently used first
so that the KV held stays under ``max_mb``.
"""

from __future__ import annotations

import copy
import hashlib
import math
import threading
from collections import OrderedDict

import numpy as np


class ContextCache:
    """LRU of draft KV caches for prompt prefixes, at most ``max_mb`` MiB of KV (0: off). Thread-safe."""

    def __init__(self, max_mb: float = 0):
        if isinstance(max_mb, bool) or not isinstance(max_mb, (int, float)) or not 0 <= max_mb < math.inf:
            raise ValueError(f"context_cache_mb must be a number of MiB >= 0 (0: no cache), got {max_mb!r}")
        self.max_bytes = int(max_mb * 2**20)
        self._entries: OrderedDict[tuple, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        """KV bytes held now."""
        with self._lock:
            return sum(size for _, size in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(model, ids: list[int]) -> tuple:
        """The entry for ``ids`` read by ``model`` (its identity and a digest of the token ids)."""
        digest = hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=16).hexdigest()
        return id(model), len(ids), digest

    def get(self, key: tuple):
        """A private copy of the cached KV for ``key``, or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            cache = entry[0]
        return self._copy(cache)

    def put(self, key: tuple, cache) -> None:
        """Keep a copy of ``cache`` under ``key``, evicting the least recently used entries to stay in bounds."""
        size = self._size(cache)
        if size > self.max_bytes:
            return
        stored = self._copy(cache)
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (stored, size)
            total = sum(s for _, s in self._entries.values())
            while total > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                total -= evicted

    # what an entry is: a transformers Cache, which a forward pass extends in place (so each reader gets a copy)
    _copy = staticmethod(copy.deepcopy)
    _size = staticmethod(lambda cache: kv_bytes(cache))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def kv_bytes(cache) -> int:
    """Bytes of the keys and values a transformers ``Cache`` holds."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if t is not None and hasattr(t, "numel"):
                total += t.numel() * t.element_size()
    return total
