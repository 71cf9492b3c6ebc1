"""Long stages show one progress bar each: the embedder's own nested bars and INFO chatter stay silent."""

from __future__ import annotations

import logging

import numpy as np

from draft_rag.cli import _setup_logging
from draft_rag.corpus import build_index
from draft_rag.prompt import Chunk


class RecordingEmbedder:
    """Stands in for a SentenceTransformer and records the keyword arguments of each ``encode`` call."""

    def __init__(self):
        self.calls = []

    def encode(self, texts, **kwargs):
        self.calls.append(kwargs)
        return np.ones((len(texts), 4), dtype=np.float32) / 2


def test_embedder_bars_are_off(tmp_path, monkeypatch):
    monkeypatch.setenv("DRAFT_RAG_CACHE", str(tmp_path))
    embedder = RecordingEmbedder()
    index = build_index(
        [Chunk(f"text {i}", id=i) for i in range(5)], embedder=embedder, batch_size=2, progress=False, cache=False
    )
    index.search("a query", k=2)
    assert len(embedder.calls) == 4 and all(c.get("show_progress_bar") is False for c in embedder.calls)


def test_cli_logging_keeps_other_libraries_quiet():
    _setup_logging(verbose=False)
    assert logging.getLogger("draft_rag").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("sentence_transformers").getEffectiveLevel() >= logging.WARNING
