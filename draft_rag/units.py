"""Units of text that SpecPC keeps whole or drops whole, and the gap marks between the units it keeps.

A unit is a word, a sentence or a line of prose (``granularity``), or one structured line whatever the
granularity: a Markdown table row, list item or heading, a fenced or indented code line. Units carry their
trailing whitespace, so kept units joined in order read as the source. Some units need others: a table row its
table's header (and separator) row, a code line its opening fence and the nearest enclosing block opener (``def
f(...):``, ``class X:``, ``if ...:``, ``{``), so a kept row or line is never read out of its context.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass

GRANULARITIES = ("token", "word", "sentence", "line")
DEFAULT_GRANULARITY = "sentence"  # the best of the unit modes on the evidence (docs/faithfulness.md)
DEFAULT_GAP = "…"  # the gap mark: "… " inline, "…" on a line of its own between lines

MAX_UNIT_CHARS = 400  # a longer sentence or line of prose is cut at spaces into pieces of at most this
MAX_LINE_CHARS = 1000  # a longer line is prose, whatever it starts or ends with (text flattened onto one line)
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+")
_WORD = re.compile(r"\S+\s*")
_LIST_ITEM = re.compile(r"\s*(?:[-*+]|\d+[.)])\s")
_HEADING = re.compile(r"\s*#{1,6}\s")
_TABLE_SEPARATOR = re.compile(r"\s*\|?\s*:?-{2,}")
_CODE_START = re.compile(r"\s*(?:def|class|async def|import|from|return|function|const|let|var|@)\b")
_BLOCK_OPENER = re.compile(r".*[:{(\[]\s*$")


@dataclass(frozen=True)
class Unit:
    """Characters ``start:end`` of a text (trailing whitespace included); ``needs``: units kept with this one."""

    start: int
    end: int
    needs: tuple[int, ...] = ()


def check_granularity(value) -> None:
    if value not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {value!r}")


def split_units(text: str, granularity: str) -> list[Unit]:
    """``text`` cut into units that cover it end to end (``granularity`` ``"word"``, ``"sentence"`` or ``"line"``)."""
    check_granularity(granularity)
    if granularity == "token":
        raise ValueError("granularity='token' keeps tokens, not units: split_units needs word, sentence or line")
    units: list[Unit] = []
    table_header: list[int] = []  # the open table's header and separator units
    fence: int | None = None  # the open code fence's unit
    openers: list[tuple[int, int]] = []  # (indent, unit) of enclosing block openers, innermost last
    pos = 0
    for line in text.splitlines(keepends=True):
        kind = line_kind(line, fence is not None)
        first = len(units)
        if kind == "prose":
            units += _split_prose(line, pos, granularity)
        else:
            units.append(Unit(pos, pos + len(line), _needs(kind, line, table_header, fence, openers)))
        table_header, fence, openers = _track(kind, line, first, table_header, fence, openers)
        pos += len(line)
    return units


def line_kind(line: str, in_fence: bool) -> str:
    """``"prose"``, ``"blank"``, or the structure a line is (``"table"``, ``"item"``, ``"code"``, ``"fence"``)."""
    stripped = line.strip()
    if stripped.startswith("```"):
        return "fence"
    if not stripped:
        return "blank"
    if len(line) > MAX_LINE_CHARS:
        return "prose"
    if in_fence:
        return "code"
    if stripped.startswith("|"):
        return "table"
    if _HEADING.match(line) or _LIST_ITEM.match(line):
        return "item"
    if line[:1] in (" ", "\t") or _CODE_START.match(line) or _BLOCK_OPENER.match(line.rstrip("\n")):
        return "code"
    return "prose"


def _split_prose(line: str, pos: int, granularity: str) -> list[Unit]:
    if granularity == "line":
        return [Unit(pos + a, pos + b) for a, b in _cap(line, 0, len(line))]
    if granularity == "word":
        cuts = [m.end() for m in _WORD.finditer(line)]
    else:
        cuts = [m.end() for m in _SENTENCE_END.finditer(line)] + [len(line)]
    lead = len(line) - len(line.lstrip())  # leading whitespace stays with the line's first unit
    starts = [0] + [c for c in cuts[:-1] if c > lead]
    ends = starts[1:] + [len(line)]
    return [Unit(pos + a, pos + b) for s, e in zip(starts, ends) if e > s for a, b in _cap(line, s, e)]


def _cap(line: str, start: int, end: int) -> list[tuple[int, int]]:
    """``line[start:end]`` in pieces of at most ``MAX_UNIT_CHARS``, cut after a space (never inside a word)."""
    pieces = []
    while end - start > MAX_UNIT_CHARS:
        cut = line.rfind(" ", start + 1, start + MAX_UNIT_CHARS) + 1
        if cut <= start:  # one word longer than the cap: it stays whole
            cut = min(line.find(" ", start + MAX_UNIT_CHARS) + 1 or end, end)
        pieces.append((start, cut))
        start = cut
    return pieces + ([(start, end)] if end > start else [])


def _needs(kind: str, line: str, table_header, fence, openers) -> tuple[int, ...]:
    """What a structured line needs kept with it: a table row its header, a code line its fence and opener."""
    if kind == "table":
        return tuple(table_header)
    if kind != "code":
        return ()
    indent = len(line) - len(line.lstrip())
    enclosing = [u for i, u in openers if i < indent][-1:]
    return tuple(([fence] if fence is not None else []) + enclosing)


def _track(kind: str, line: str, index: int, table_header, fence, openers):
    """The open table, fence and block openers after a line of ``kind`` (unit ``index``)."""
    if kind == "table":
        if not table_header or (len(table_header) == 1 and _TABLE_SEPARATOR.match(line)):
            table_header = table_header + [index]
    elif kind != "blank":
        table_header = []
    if kind == "fence":
        return table_header, (None if fence is not None else index), []
    if kind == "code":
        indent = len(line) - len(line.lstrip())
        openers = [(i, u) for i, u in openers if i < indent]
        if _BLOCK_OPENER.match(line.rstrip("\n")):
            openers.append((indent, index))
    elif kind != "blank" and fence is None:
        openers = []
    return table_header, fence, openers


def unit_of(units: list[Unit], starts: list[int], start: int, end: int) -> int:
    """The unit holding a token at characters ``start:end``: the one that holds its last character."""
    return max(0, bisect_right(starts, max(start, end - 1)) - 1)


def gap_mark(dropped: str, gap: str) -> str:
    """What stands for ``dropped`` text between two kept pieces: ``gap`` on a line of its own when the dropped
    text spans lines, else ``gap`` and a space."""
    return gap + ("\n" if "\n" in dropped else " ")


def render(text: str, spans: list[tuple[int, int]], gap: str = DEFAULT_GAP) -> str:
    """The kept ``spans`` of ``text`` in order, with a gap mark wherever two of them are not adjacent
    (``gap=""``: joined end to end, as token-level SpecPC does)."""
    pieces, last = [], None
    for s, e in spans:
        if gap and last is not None and s > last:
            pieces.append(gap_mark(text[last:s], gap))
        pieces.append(text[s:e])
        last = e
    return "".join(pieces)


def select_units(
    costs: list[int], scores: list[float], needs: list[tuple[int, ...]], forced: list[int], budget: int, gap_cost=0
) -> list[int]:
    """Indices of the units to keep: ``forced`` ones (with what they need) first, then the best-scored units
    that still fit ``budget`` with what they need, skipping any that do not (a large unit never pushes past it).

    ``costs`` are tokens of units that follow each other in this order; each gap between two kept runs costs
    ``gap_cost`` tokens (its mark). Forced units are kept even past ``budget`` (nothing else is then): the
    caller checks that what it must keep fits.
    """
    kept = [False] * len(costs)
    runs = used = 0

    def add(unit: int) -> tuple[int, list[int]]:
        """Mark ``unit`` and what it needs as kept; return the tokens that costs and the units newly marked."""
        nonlocal runs
        cost, todo, marked = 0, [unit], []
        while todo:
            u = todo.pop()
            if kept[u]:
                continue
            kept[u] = True
            marked.append(u)
            todo += needs[u]
            before, runs = runs, runs + 1 - sum(1 for v in (u - 1, u + 1) if 0 <= v < len(kept) and kept[v])
            cost += costs[u] + gap_cost * (max(0, runs - 1) - max(0, before - 1))
        return cost, marked

    for u in forced:
        used += add(u)[0]
    for u in sorted(range(len(costs)), key=lambda i: -scores[i]):
        if kept[u]:
            continue
        before = runs
        cost, marked = add(u)
        if used + cost <= budget:
            used += cost
        else:  # undo
            for v in marked:
                kept[v] = False
            runs = before
    return [u for u in range(len(kept)) if kept[u]]
