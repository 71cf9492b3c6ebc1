"""A self-contained HTML page showing what SpecPC kept: kept text coloured by draft importance, dropped
text greyed and struck through, and a table of per-chunk scores. Inline CSS only, no scripts, no links."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from .specpc import CompressedPrompt

LEVELS = 8
# Kept text background by importance level 1..LEVELS (light yellow -> deep orange).
KEPT_COLOURS = ["#fff7c2", "#ffeea0", "#ffe380", "#ffd466", "#ffc04d", "#ffa94d", "#ff9233", "#ff7a1a"]
DROPPED_COLOUR = "#a3a3a3"
PROTECTED_COLOUR = "#d6e6ff"
BAR_COLOUR = "#3b6fd8"

CSS = f"""
body {{ font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px; color: #1f2328;
       background: #ffffff; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }}
h2 {{ font-size: 16px; margin: 28px 0 6px; }}
.summary {{ color: #444; margin: 4px 0 12px; }}
.legend span.sw {{ display: inline-block; padding: 0 6px; margin-right: 6px; border-radius: 3px; }}
table.chunks {{ border-collapse: collapse; font-size: 13px; margin-bottom: 8px; }}
table.chunks td, table.chunks th {{ border-bottom: 1px solid #e5e5e5; padding: 3px 10px; text-align: left; }}
table.chunks td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.bar {{ display: inline-block; height: 9px; background: {BAR_COLOUR}; vertical-align: middle; }}
.barbox {{ display: inline-block; width: 120px; background: #eef2fa; }}
.prompt {{ font-family: ui-monospace, 'DejaVu Sans Mono', monospace; font-size: 12.5px; line-height: 1.5; }}
.region {{ border: 1px solid #e2e2e2; border-radius: 6px; margin: 8px 0; padding: 6px 10px; }}
.region .label {{ font-family: system-ui, sans-serif; font-size: 12px; color: #555; margin-bottom: 4px; }}
.region .text {{ white-space: pre-wrap; word-break: break-word; }}
.k {{ color: #111; border-radius: 2px; }}
{"".join(f".k.l{i + 1} {{ background: {c}; }}" + chr(10) for i, c in enumerate(KEPT_COLOURS))}
.k.l0 {{ background: {KEPT_COLOURS[1]}; }}
.d {{ color: {DROPPED_COLOUR}; text-decoration: line-through; text-decoration-color: #c4c4c4; }}
.d.ws {{ text-decoration: none; }}
.p {{ background: {PROTECTED_COLOUR}; color: #111; }}
"""


def _levels(shortened: CompressedPrompt) -> np.ndarray:
    """Importance level per character of ``original_text``: 1..LEVELS by the token's score percentile
    among all scored tokens, 0 where the draft gave no score (draft not run, or whitespace between tokens)."""
    level = np.zeros(len(shortened.original_text), dtype=np.int8)
    if not shortened.token_scores:
        return level
    scores = np.array([s for _, _, s in shortened.token_scores])
    ranks = np.argsort(np.argsort(scores, kind="stable"), kind="stable")
    pct = (ranks + 1) / len(scores)
    for (start, end, _), p in zip(shortened.token_scores, pct):
        level[start:end] = max(1, int(np.ceil(p * LEVELS)))
    return level


def _kept_mask(shortened: CompressedPrompt) -> np.ndarray:
    kept = np.zeros(len(shortened.original_text), dtype=bool)
    for start, end in shortened.kept_spans:
        kept[start:end] = True
    return kept


def _chunk_regions(shortened: CompressedPrompt) -> list[tuple[int, int, int | None]]:
    """(start, end, chunk index or None) covering ``original_text``; None marks protected text."""
    regions, pos = [], 0
    for i, c in enumerate(shortened.chunks):
        if not c.original:
            continue
        start = shortened.original_text.find(c.original, pos)
        if start < 0:
            continue
        if start > pos:
            regions.append((pos, start, None))
        regions.append((start, start + len(c.original), i))
        pos = start + len(c.original)
    if pos < len(shortened.original_text):
        regions.append((pos, len(shortened.original_text), None))
    return regions


def _spans_html(text: str, kept: np.ndarray, level: np.ndarray, protected: bool) -> str:
    """Runs of equal (kept, level) as <span>s; protected text is one always-kept span."""
    if protected:
        return f'<span class="p">{html.escape(text.strip(chr(10)))}</span>'
    out, i = [], 0
    while i < len(text):
        j = i + 1
        while j < len(text) and kept[j] == kept[i] and level[j] == level[i]:
            j += 1
        piece = html.escape(text[i:j])
        if kept[i]:
            out.append(f'<span class="k l{level[i]}" data-level="{level[i]}">{piece}</span>')
        else:
            ws = "" if text[i:j].strip() else " ws"  # no strike-through line across bare indentation
            out.append(f'<span class="d{ws}" data-level="{level[i]}">{piece}</span>')
        i = j
    return "".join(out)


def _chunk_table(shortened: CompressedPrompt) -> str:
    if not shortened.chunks:
        return ""
    top = max((c.score for c in shortened.chunks), default=0.0) or 1.0
    rows = []
    for c in sorted(shortened.chunks, key=lambda c: -c.score):
        source = c.metadata.get("source", "") if isinstance(c.metadata, dict) else ""
        width = int(round(120 * c.score / top))
        rows.append(
            f'<tr class="chunk-row" data-chunk="{html.escape(str(c.id))}"><td>{html.escape(str(c.id))}</td>'
            f'<td>{html.escape(str(source))}</td><td class="num">{c.score:.4g}</td>'
            f'<td><span class="barbox"><span class="bar" style="width:{width}px"></span></span></td>'
            f'<td class="num">{100 * c.kept_fraction:.0f}%</td></tr>'
        )
    return (
        '<table class="chunks"><tr><th>chunk</th><th>source</th><th>draft score</th><th></th>'
        "<th>kept</th></tr>" + "".join(rows) + "</table>"
    )


def render_section(shortened: CompressedPrompt, title: str | None = None) -> str:
    """One compressed prompt as an HTML fragment: summary, per-chunk table, highlighted text."""
    if not isinstance(shortened, CompressedPrompt):
        raise TypeError(f"compressed_prompt must be a CompressedPrompt, got {type(shortened).__name__}")
    kept, level = _kept_mask(shortened), _levels(shortened)
    secs = shortened.seconds or {}
    note = "" if shortened.token_scores else " (within budget: the draft was not run, everything kept)"
    summary = (
        f"{shortened.original_tokens} tokens &rarr; {shortened.compressed_tokens} kept "
        f"({100 * shortened.ratio:.0f}%); draft {secs.get('draft', 0.0):.2f} s, select "
        f"{secs.get('select', 0.0):.2f} s{note}"
    )
    parts = [
        f"<h2>{html.escape(title)}</h2>" if title else "",
        f'<p class="summary">{summary}</p>',
        _chunk_table(shortened),
        '<div class="prompt">',
    ]
    for start, end, idx in _chunk_regions(shortened):
        text = shortened.original_text[start:end]
        if idx is None:
            if not text.strip():
                continue
            label = "protected: instruction / question (always kept)"
            attrs = 'class="region protected"'
        else:
            c = shortened.chunks[idx]
            label = (
                f"chunk {html.escape(str(c.id))} &middot; draft score {c.score:.4g} &middot; "
                f"kept {100 * c.kept_fraction:.0f}%"
            )
            attrs = f'class="region chunk" data-chunk="{html.escape(str(c.id))}"'
        body = _spans_html(text, kept[start:end], level[start:end], idx is None)
        parts.append(f'<div {attrs}><div class="label">{label}</div><div class="text">{body}</div></div>')
    parts.append("</div>")
    return "\n".join(p for p in parts if p)


def _legend() -> str:
    swatches = "".join(f'<span class="sw k l{i}">{i}</span>' for i in range(1, LEVELS + 1))
    return (
        f'<p class="legend">kept, by draft importance (low &rarr; high): {swatches} '
        f'<span class="sw d">dropped</span> <span class="sw p">protected</span></p>'
    )


def render_html(compressed_prompt, title: str = "draft-rag: what was kept") -> str:
    """A whole page for one ``CompressedPrompt`` or a list of ``(section title, CompressedPrompt)``."""
    sections = compressed_prompt if isinstance(compressed_prompt, list) else [(None, compressed_prompt)]
    body = "\n".join(render_section(shortened, t) for t, shortened in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{_legend()}\n{body}\n</body></html>\n"
    )


def write_html(compressed_prompt, path, title: str = "draft-rag: what was kept") -> Path:
    """Write ``render_html(compressed_prompt)`` to ``path`` (UTF-8) and return the path."""
    path = Path(path)
    path.write_text(render_html(compressed_prompt, title), encoding="utf-8")
    return path
