"""The "what was kept" page: structure, fidelity to the CompressedPrompt, escaping, self-containment."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from conftest import tiny_model

from draft_rag import Chunk, DraftEngine, SpecPCConfig
from draft_rag.html import LEVELS, _levels, render_html, write_html

TINY = SpecPCConfig(starting_layer_index=0, window_size=8, kernel_size=5, neighbor_tokens=4)
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def _chunks():
    out = []
    for i in range(6):
        body = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(60))
        out.append(Chunk(f"[doc{i}] {body} <b>&amp; {i}</b>", id=f"doc{i}#0", metadata={"source": f"doc{i}"}))
    return out


@pytest.fixture(scope="module")
def compressed():
    engine = DraftEngine(draft=tiny_model("llama"), specpc=TINY)
    return engine.compress(
        chunks=_chunks(), instruction="Use the notes.", question="Which word follows gamma?", ratio=0.3
    )


class Regions(HTMLParser):
    """Text of each region, split into kept (class k / p) and dropped (class d) spans."""

    def __init__(self):
        super().__init__()
        self.regions, self.stack, self.tags = [], [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        cls = (a.get("class") or "").split()
        if tag == "div" and "region" in cls:
            self.regions.append({"chunk": a.get("data-chunk"), "kept": "", "dropped": "", "levels": []})
        if tag == "span" and self.regions and cls and cls[0] in ("k", "d", "p"):
            if cls[0] == "k":
                self.regions[-1]["levels"].append(int(a["data-level"]))
        self.stack.append(cls[0] if tag == "span" and cls else None)

    def handle_endtag(self, tag):
        self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] in ("k", "p"):
            self.regions[-1]["kept"] += data
        elif self.stack and self.stack[-1] == "d":
            self.regions[-1]["dropped"] += data


def _parse(page: str) -> Regions:
    p = Regions()
    p.convert_charrefs = True
    p.feed(page)
    return p


def test_page_matches_compressed_prompt(compressed):
    cp = compressed
    assert cp.token_scores and cp.compressed_tokens < cp.original_tokens
    regions = _parse(render_html(cp)).regions
    by_id = {r["chunk"]: r for r in regions if r["chunk"]}
    assert set(by_id) == {c.id for c in cp.chunks}
    for c in cp.chunks:
        r = by_id[c.id]
        assert r["kept"] == c.text  # exactly the surviving text of the chunk is highlighted
        assert len(r["kept"]) + len(r["dropped"]) == len(c.original)
    protected = [r for r in regions if r["chunk"] is None]
    assert any("Which word follows gamma?" in r["kept"] for r in protected)
    assert any("Use the notes." in r["kept"] for r in protected)
    assert not any(r["dropped"] for r in protected)
    assert any(r["dropped"] for r in regions)  # something was dropped and is shown as dropped


def test_page_is_self_contained_and_escaped(compressed, tmp_path):
    path = write_html(compressed, tmp_path / "kept.html")
    page = path.read_text(encoding="utf-8")
    lowered = page.lower()
    assert "<script" not in lowered and "<link" not in lowered and "src=" not in lowered
    assert "http://" not in lowered and "https://" not in lowered
    assert "<style>" in page
    assert "<b>" not in page.split("<body>")[1]  # chunk markup is shown as text, never interpreted
    assert "&lt;" in page and "&amp;" in page.split("<body>")[1]
    assert _parse(page).tags >= {"html", "table", "div", "span", "style"}


def test_levels_follow_draft_scores(compressed):
    cp = compressed
    level = _levels(cp)
    best = max(cp.token_scores, key=lambda t: t[2])
    worst = min(cp.token_scores, key=lambda t: t[2])
    assert level[best[0]] == LEVELS and level[worst[0]] == 1
    for (s1, _, a), (s2, _, b) in zip(cp.token_scores, cp.token_scores[1:]):
        if a < b:
            assert level[s1] <= level[s2]


def test_per_chunk_table_sorted_by_score(compressed):
    page = render_html(compressed)
    order = [c.id for c in sorted(compressed.chunks, key=lambda c: -c.score)]
    positions = [page.index(f'<tr class="chunk-row" data-chunk="{cid}">') for cid in order]
    assert positions == sorted(positions)


def test_within_budget_everything_kept():
    engine = DraftEngine(draft=tiny_model("llama"), specpc=TINY)
    cp = engine.compress(chunks=_chunks()[:2], question="Which word?", budget=4000)
    assert not cp.token_scores
    page = render_html(cp)
    regions = _parse(page).regions
    assert all(not r["dropped"] for r in regions)
    assert "draft was not run" in page


def test_several_sections_and_bad_input(compressed, tmp_path):
    page = render_html([("first question", compressed), ("second question", compressed)])
    assert page.count("<h2>") == 2 and "second question" in page
    with pytest.raises(TypeError, match="CompressedPrompt"):
        render_html("not a compressed prompt")
