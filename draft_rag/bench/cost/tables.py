"""The cost bench's Markdown tables, from its rows (``cost.json``)."""

from __future__ import annotations

from ... import methods
from .shapes import METHODS


def budget_label(row: dict) -> str:
    """A row's method and budget as tables and the plot name it: ``full``, ``specpc@25%``, ``speckv@256``,
    ``speckv-pc@25%/256``; `` +sparse`` after cells with a sparse prefill (prompt compression has none)."""
    b, tail = row["budget"], " +sparse" if row.get("sparse_prefill") else ""
    m = methods.get(row["method"])
    if m.reference:
        return m.name + tail
    if not m.evicts_kv:
        return f"{m.name}@{b:.0%}"
    if not m.shortens_prompt:
        return f"{m.name}@{b}" + tail
    return f"{m.name}@{b[0]:.0%}/{b[1]}" + tail


def dense_reference(row: dict) -> bool:
    """The row every speed-up is measured against: the uncompressed method with a dense prefill."""
    return methods.get(row["method"]).reference and not row.get("sparse_prefill")


def compared(row: dict) -> bool:
    """A row compared with the reference (every row but the dense reference)."""
    return not dense_reference(row)


def kv_only(row: dict) -> bool:
    """A row of a method that evicts KV entries from the whole prompt (SpecKV)."""
    m = methods.get(row["method"])
    return m.evicts_kv and not m.shortens_prompt


def prompt_only(row: dict) -> bool:
    """A row of a method that shortens the prompt and keeps the KV cache whole (SpecPC)."""
    m = methods.get(row["method"])
    return m.shortens_prompt and not m.evicts_kv


def table(rows: list[dict]) -> str:
    """Markdown table of the rows, by shape, length, then method."""
    order = {m: i for i, m in enumerate(METHODS)}
    head = (
        "| target | tokens | method | TTFT s | end-to-end s | speed-up | decode s/tok | draft s | plain draft s "
        "| target prefill s | peak MiB | KV MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    rows = sorted(
        rows, key=lambda r: (r["size_ratio"], r["length"], r.get("sparse_prefill", False), order[r["method"]])
    )
    for r in rows:  # stable: budgets as run
        name = r["shape"] + (" (scaled)" if r["scaled"] else "")
        label = budget_label(r) + (" (past the draft's window)" if r.get("past_draft_window") else "")
        plain = "" if r["plain_draft_s"] is None else f"{r['plain_draft_s']:.1f}"  # timed with specpc only
        lines.append(
            f"| {name} | {r['draft_tokens']} | {label} | {r['ttft_s']:.1f} | {r['e2e_s']:.1f} | "
            f"{r['speedup_e2e']:.2f}x | {r['decode_s_per_token']:.3f} | {r['draft_s']:.1f} | "
            f"{plain} | {r['prefill_s']:.1f} | {r['peak_bytes'] / 2**20:.0f} | {r['kv_bytes'] / 2**20:.1f} |"
        )
    return "\n".join(lines)


def speedup_table(rows: list[dict]) -> str:
    """Per method@budget, the end-to-end speed-up at each length for each target (the README's summary), and
    SpecKV's KV kept and decode time per token against full context at the longest length."""
    shapes = sorted({r["shape"] for r in rows}, key=lambda s: next(r["size_ratio"] for r in rows if r["shape"] == s))
    lengths = sorted({r["length"] for r in rows})
    by = {(r["shape"], r["length"], budget_label(r)): r for r in rows}
    ratio = {s: next(r["size_ratio"] for r in rows if r["shape"] == s) for s in shapes}
    span = " / ".join(f"{n // 1024}k" for n in lengths)
    head = ["end-to-end speed-up vs full context"] + [f"{s} ({ratio[s]:.1f}x draft) {span}" for s in shapes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {m: i for i, m in enumerate(METHODS)}  # then the budget levels in the order they ran
    ranked = sorted(rows, key=lambda r: (r.get("sparse_prefill", False), order[r["method"]]))
    labels = [budget_label(r) for r in ranked if compared(r)]
    labels = list(dict.fromkeys(labels))
    for lab in labels:
        cells = [" / ".join(_times(by.get((s, n, lab)), "speedup_e2e") for n in lengths) for s in shapes]
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    longest, kv = lengths[-1], next((budget_label(r) for r in ranked if kv_only(r)), None)
    if kv:
        cells = []
        for s in shapes:
            full, row = by.get((s, longest, "full")), by.get((s, longest, kv))
            cells.append(
                f"{100 * row['kv_bytes'] / full['kv_bytes']:.1f}% / "
                f"{row['decode_s_per_token'] / full['decode_s_per_token']:.2f}x"
                if full and row
                else ""
            )
        lines.append(
            f"| {kv} at {longest // 1024}k: KV kept / decode s per token vs full | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def _times(row: dict | None, key: str) -> str:
    """``row[key]`` as a factor (``1.23x``), "" without a row."""
    return f"{row[key]:.2f}x" if row else ""


def sparse_table(rows: list[dict]) -> str:
    """Per target and length: dense vs sparse prefill, the attention kernel's share of the dense prefill, and the
    end-to-end speed-up of each KV method with either prefill (against full context, dense)."""
    if not any(r.get("sparse_prefill") for r in rows):
        return ""
    by = {(r["shape"], r["length"], budget_label(r)): r for r in rows}
    kv = [r for r in rows if compared(r) and not r.get("sparse_prefill") and not prompt_only(r)]
    kv = list(dict.fromkeys(budget_label(r) for r in kv))
    head = ["target", "tokens", "attention share (dense)", "prefill s dense", "prefill s sparse", "sparse / dense"]
    head += [f"{lab} e2e dense / +sparse" for lab in kv]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for dense in sorted((r for r in by.values() if dense_reference(r)), key=lambda r: (r["size_ratio"], r["length"])):
        shape, length = dense["shape"], dense["length"]
        sparse = by.get((shape, length, budget_label(dense) + " +sparse"))
        if sparse is None:
            continue
        speedups = [
            " / ".join(_times(by.get((shape, length, k + tail)), "speedup_e2e") for tail in ("", " +sparse"))
            for k in kv
        ]
        share = f"{dense['attention_share']:.0%}" if dense.get("attention_share") is not None else ""
        name = shape + (" (scaled)" if dense["scaled"] else "")
        cells = [name, str(dense["draft_tokens"]), share, f"{dense['prefill_s']:.1f}", f"{sparse['prefill_s']:.1f}"]
        cells += [f"{sparse['prefill_s'] / dense['prefill_s']:.2f}x", *speedups]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def overhead_table(rows: list[dict]) -> str:
    """The draft's scoring pass (SpecPC, no selection) against a plain draft forward of the same prompt ("" when
    SpecPC did not run)."""
    if not any(prompt_only(r) for r in rows):
        return ""
    lines = ["| draft tokens | plain forward s | scoring pass s | overhead | repetitions |", "|---|---|---|---|---|"]
    seen = set()
    for r in sorted(rows, key=lambda r: r["length"]):
        if not prompt_only(r) or r["length"] in seen:
            continue
        seen.add(r["length"])
        lines.append(
            f"| {r['draft_tokens']} | {r['plain_draft_s']:.1f} | {r['scoring_s']:.1f} | "
            f"{r['scoring_s'] / r['plain_draft_s'] - 1:+.0%} | {r['repeats']} |"
        )
    return "\n".join(lines)
