"""Does a compressed text state only what its source states? ``unsupported`` lists what it does not.

Checked, with the gap marks taken out: every digit run and identifier of the output is a whole one of the
source (``ORD-950`` cut from ``ORD-9509747`` is not), every piece of an output line between gap marks is a
piece of one source line (two fragments fused into one is not), and a structured source line (table row, list
item, heading, code line) is never cut (``"split"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .units import DEFAULT_GAP, line_kind

_DIGITS = re.compile(r"\d+")
_IDENTIFIER = re.compile(r"[\w+]+(?:[-.@/:][\w+]+)+|\w*\d\w*|\w+_\w+")


@dataclass(frozen=True)
class Unsupported:
    """One statement of an output that its source does not make: ``kind`` is ``"number"``, ``"identifier"``,
    ``"line"`` (no source line holds it) or ``"split"`` (part of a structured line)."""

    kind: str
    text: str


def unsupported(output: str, source: str, gap: str = DEFAULT_GAP) -> list[Unsupported]:
    """What ``output`` (a compression of ``source`` whose dropped text is marked with ``gap``) states that
    ``source`` does not; empty when the output is faithful."""
    pieces = [p.strip() for line in output.splitlines() for p in (line.split(gap) if gap else [line])]
    pieces = [p for p in pieces if p]
    found = [Unsupported(kind, t) for kind, t in _tokens_not_whole(pieces, source)]
    lines = [line.strip() for line in source.splitlines()]
    structured = {line for line in lines if line_kind(line + "\n", False) not in ("prose", "blank")}
    for piece in pieces:
        where = [line for line in lines if piece in line]
        if not where:
            found.append(Unsupported("line", piece))
        elif piece not in structured and all(line in structured for line in where):
            found.append(Unsupported("split", piece))
    return found


def _tokens_not_whole(pieces: list[str], source: str):
    for kind, pattern in (("number", _DIGITS), ("identifier", _IDENTIFIER)):
        whole = set(pattern.findall(source))
        for piece in pieces:
            yield from ((kind, t) for t in pattern.findall(piece) if t not in whole)
