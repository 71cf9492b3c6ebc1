"""The "what was kept" page in a real headless browser (Debian's chromium): screenshot pixels + DOM.

Needs chromium (``scripts/setup.sh --test`` installs it): missing, these fail unless ``DRAFT_RAG_NO_CHROMIUM``
says why they may skip.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_setup

from draft_rag.html import BAR_COLOUR, DROPPED_COLOUR, KEPT_COLOURS, PROTECTED_COLOUR, write_html
from draft_rag.specpc import ChunkResult, CompressedPrompt

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(autouse=True)
def _chromium_installed():
    needs_setup("chromium", CHROMIUM is not None, "`apt-get install -y chromium` (scripts/setup.sh --test does)")


FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STRIKE = 196  # text-decoration-color #c4c4c4 of dropped text


def chromium(page: Path, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )


def screenshot(page: Path, out: Path, size=(1000, 1400)) -> np.ndarray:
    from PIL import Image

    chromium(page, f"--screenshot={out}", f"--window-size={size[0]},{size[1]}")
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])


def near(img: np.ndarray, colour: np.ndarray, tol: int = 6) -> np.ndarray:
    return (np.abs(img - colour) <= tol).all(-1)


def rows(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    return np.flatnonzero(mask.sum(1) >= min_pixels)


def highlight_mask(img: np.ndarray) -> np.ndarray:
    return np.any([near(img, _rgb(c), 4) for c in KEPT_COLOURS], axis=0)


WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def constructed() -> CompressedPrompt:
    """A prompt whose first chunk was kept whole (high scores) and whose second was dropped (low scores)."""
    instruction, sep, question = "Use the notes.", "\n\n", "Which word follows gamma?"
    a = "[keep] " + " ".join(WORDS * 12)
    b = "[drop] " + " ".join(reversed(WORDS * 12))
    text = instruction + sep + a + sep + b + sep + question
    a0, b0 = len(instruction + sep), len(instruction + sep + a + sep)
    q0 = b0 + len(b)
    scores = []
    for base, chunk, value in ((a0, a, 0.9), (b0, b, 0.01)):
        pos = 0
        for i, word in enumerate(chunk.split(" ")):
            start = chunk.index(word, pos)
            scores.append((base + start, base + start + len(word), value + 0.001 * (i % 7)))
            pos = start + len(word)
    kept = [(0, b0), (q0, len(text))]
    chunks = [
        ChunkResult("A", {"source": "notes-a"}, a, a, [(0, len(a))], 1.0, 0.9),
        ChunkResult("B", {"source": "notes-b"}, b, "", [], 0.0, 0.01),
    ]
    return CompressedPrompt(
        text="".join(text[s:e] for s, e in kept),
        original_text=text,
        kept_spans=kept,
        chunks=chunks,
        original_tokens=400,
        compressed_tokens=210,
        draft_original_tokens=400,
        draft_kept_tokens=210,
        token_scores=sorted(scores),
        seconds={"draft": 0.5, "select": 0.01},
    )


class Spans(HTMLParser):
    """Per region (data-chunk or 'protected'): text inside kept (k/p) and dropped (d) spans."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.regions, self.stack = {}, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "div" and "region" in cls:
            key = a.get("data-chunk") or f"protected{len(self.regions)}"
            self.current = self.regions.setdefault(key, {"kept": "", "dropped": ""})
        self.stack.append(cls[0] if tag == "span" and cls else None)

    def handle_endtag(self, tag):
        if self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] in ("k", "p"):
            self.current["kept"] += data
        elif self.stack and self.stack[-1] == "d":
            self.current["dropped"] += data


def test_screenshot_kept_highlighted_dropped_struck(tmp_path):
    page = write_html(constructed(), tmp_path / "kept.html")
    img = screenshot(page, tmp_path / "shot.png")
    bars = rows(near(img, _rgb(BAR_COLOUR), 3), 5)
    assert len(bars) >= 4, "per-chunk score bars are missing"
    top, bottom = bars.max(), img.shape[0]  # below the legend and the per-chunk table: the prompt itself
    protected = rows(near(img, _rgb(PROTECTED_COLOUR), 3), 50)
    assert len(protected[protected > top]) >= 10, "protected text (instruction, question) lacks its background"
    highlighted = rows(highlight_mask(img), 150)
    highlighted = highlighted[(highlighted > top) & (highlighted < bottom)]
    struck = rows(near(img, np.array([STRIKE] * 3), 6), 60)
    struck = struck[(struck > top) & (struck < bottom)]
    grey_text = rows(near(img, _rgb(DROPPED_COLOUR), 10), 20)
    grey_text = grey_text[(grey_text > top) & (grey_text < bottom)]
    assert len(highlighted) >= 30, "kept chunk A is not highlighted"
    assert len(struck) >= 5, "dropped chunk B has no strike-through lines"
    assert len(grey_text) >= 5, "dropped chunk B is not drawn in grey"
    # Chunk A (kept) comes before chunk B (dropped): every highlighted row is above every struck row.
    assert highlighted.max() < struck.min()
    assert highlighted.max() < grey_text.min()
    assert protected.max() > struck.max()  # the question comes last, after the dropped chunk
    # Kept text is drawn dark on the highlight: dark glyph pixels inside the highlighted band.
    band = img[highlighted.min() : highlighted.max() + 1]
    assert (band.max(-1) < 90).sum() > 500


def test_dom_after_load(tmp_path):
    cp = constructed()
    page = write_html(cp, tmp_path / "kept.html")
    dom = chromium(page, "--dump-dom").stdout
    parsed = Spans()
    parsed.feed(dom)
    assert parsed.regions["A"] == {"kept": cp.chunks[0].original, "dropped": ""}
    assert parsed.regions["B"] == {"kept": "", "dropped": cp.chunks[1].original}
    protected = [r["kept"] for k, r in parsed.regions.items() if k.startswith("protected")]
    assert any("Which word follows gamma?" in t for t in protected)
    assert "<script" not in dom


@pytest.mark.slow
def test_real_draft_page_in_browser(smollm, tmp_path):
    """SmolLM2 compresses real pydoc text; the page shows kept and dropped text as such."""
    from draft_rag import DraftEngine
    from draft_rag.corpus import chunk_documents, stdlib_documents

    chunks = chunk_documents(stdlib_documents(["textwrap"]))[:5]
    cp = DraftEngine(draft=smollm).compress(
        chunks=chunks, question="What is the default width of textwrap.wrap?", ratio=0.3
    )
    assert cp.compressed_tokens < cp.original_tokens
    page = write_html(cp, tmp_path / "kept.html")
    img = screenshot(page, tmp_path / "shot.png", size=(1200, 3000))
    assert len(rows(highlight_mask(img), 40)) >= 10
    assert len(rows(near(img, np.array([STRIKE] * 3), 6), 60)) >= 5
    parsed = Spans()
    parsed.feed(chromium(page, "--dump-dom").stdout)
    for c in cp.chunks:
        r = parsed.regions[str(c.id)]
        kept = "".join(c.original[s:e] for s, e in c.kept_spans)  # the page shows drops in place: no gap marks
        assert r["kept"] == kept and len(r["kept"]) + len(r["dropped"]) == len(c.original)
