"""Markdown tables and a PNG plot from bench results (``results.json``)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..blocks import DEFAULT_BLOCK_SIZE
from ..methods import REGISTRY
from .tasks import RULER_13

CELL_KEYS = ("pair", "task", "length", "n", "seed", "method", "budget", "ratio", "block_size", "coverage",
             "sparse_prefill", "follow_ups", "granularity",
             "chunk_tokens", "chunk_cache")  # fmt: skip  # what tells one bench cell from another


def label(cell: dict) -> str:
    """``method @budget``, with both budgets for speckv-pc, the draft's block size where the cell set one and
    " +sparse" for a sparse target prefill."""
    blocks = f" [blocks of {cell['block_size']}]" if cell.get("block_size") else ""
    blocks += " +sparse" if cell.get("sparse_prefill") else ""
    blocks += f" [{cell['granularity']}s]" if cell.get("granularity") else ""
    blocks += f" [chunks of {cell['chunk_tokens']}]" if cell.get("chunk_tokens") else ""
    blocks += " +chunk cache" if cell.get("chunk_cache") else ""
    if cell.get("coverage") is not None:  # an adaptive budget
        return f"{cell['method']} @adaptive {cell['coverage']:.0%}{blocks}"
    if cell.get("ratio") is not None and cell.get("budget") is not None:  # speckv-pc: prompt ratio and KV entries
        return f"{cell['method']} @{cell['ratio']:.0%} / {cell['budget']} KV{blocks}"
    if cell.get("ratio") is not None:
        return f"{cell['method']} @{cell['ratio']:.0%}{blocks}"
    if cell.get("budget") is not None:
        return f"{cell['method']} @{cell['budget']}{blocks}"
    return cell["method"] + blocks


ORDER = ("full", "specpc", "speckv-pc", "llmlingua", "speckv", "snapkv", "streamingllm", "random")


def _sort_key(cell: dict):
    m = cell["method"]
    budget = cell.get("budget") if isinstance(cell.get("budget"), int) else 0
    return (ORDER.index(m) if m in ORDER else len(ORDER), m, cell.get("coverage") or 0, cell.get("ratio") or 0, budget)


def _by_pair_and_length(cells: list[dict]):
    """Yield (pair, length, cells, tasks, {method@budget: {task: cell}}) per (pair, length), rows in ORDER."""
    groups = defaultdict(list)
    for c in cells:
        groups[(c["pair"], c["length"])].append(c)
    for (pair, length), group in groups.items():
        rows = defaultdict(dict)
        for c in sorted(group, key=_sort_key):
            rows[label(c)][c["task"]] = c
        yield pair, length, group, _task_order(c["task"] for c in group), rows


def _task_order(tasks) -> list[str]:
    """RULER's 13 in RULER's order, then any other task as first seen (sorted is stable), so merged runs align."""
    return sorted(dict.fromkeys(tasks), key=lambda t: RULER_13.index(t) if t in RULER_13 else len(RULER_13))


def grid_table(cells: list[dict]) -> str:
    """One markdown table per (pair, length): rows method@budget, a score column per task, then averages."""
    parts = []
    for pair, length, group, tasks, rows in _by_pair_and_length(cells):
        common = [t for t in tasks if all(t in r for r in rows.values())]  # means compare like with like
        mean_head = "mean" if common == tasks else f"mean ({', '.join(common)})"
        head = ["method @ budget", *tasks, mean_head, "kept tokens", "draft s", "target s", "total s", "KV MiB"]
        lines = [
            f"**{pair}**, {length}-token tasks, {group[0]['n']} records each (the last six columns: "
            f"mean per record over the tasks in the mean)",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for name, by_task in rows.items():
            cs = [by_task[t] for t in common]
            mean = lambda k, sub=None: sum((c[k][sub] if sub else c[k]) for c in cs) / len(cs)  # noqa: E731
            kv = [c["kv_bytes"] for c in cs if c.get("kv_bytes") is not None]
            cols = [f"{by_task[t]['score']:.1f}" if t in by_task else "" for t in tasks]
            lines.append(
                "| "
                + " | ".join(
                    [
                        name,
                        *cols,
                        f"**{mean('score'):.1f}**",
                        f"{mean('avg_kept_tokens'):.0f} / {mean('avg_input_tokens'):.0f}",
                        f"{mean('seconds', 'draft'):.2f}",
                        f"{mean('seconds', 'target'):.2f}",
                        f"{mean('seconds', 'total'):.2f}",
                        f"{sum(kv) / len(kv) / 2**20:.1f}" if kv else "",
                    ]
                )
                + " |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def summary_table(cells: list[dict]) -> str:
    """Per (pair, length): each method@budget's mean score, the niah tasks' mean, every other task and, for rows
    with every task, the mean kept tokens (of the prompt's)."""
    parts = []
    for pair, length, _, tasks, rows in _by_pair_and_length(cells):
        niah = [t for t in tasks if t.startswith("niah")]
        rest = [t for t in tasks if t not in niah]
        head = ["method @ budget", "mean", *([f"niah ({len(niah)} tasks)"] if niah else []), *rest, "kept tokens",
                "records"]  # fmt: skip
        lines = [f"**{pair}**, {length} tokens", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, by_task in rows.items():
            scores = {t: c["score"] for t, c in by_task.items()}
            avg = lambda ts: f"{sum(scores[t] for t in ts) / len(ts):.1f}" if all(t in scores for t in ts) else ""  # noqa: E731
            n = sum(c["n"] for c in by_task.values())
            mean = avg(tasks)
            cols = [f"**{mean}**" if mean else "", *([avg(niah)] if niah else []), *(avg([t]) for t in rest)]
            cols += [_kept(by_task.values()) if mean else "", str(n)]
            lines.append("| " + " | ".join([name, *cols]) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _kept(cells) -> str:
    """Mean kept / mean input tokens per record over ``cells``."""
    cells = list(cells)
    mean = lambda k: sum(c[k] for c in cells) / len(cells)  # noqa: E731
    return f"{mean('avg_kept_tokens'):.0f} / {mean('avg_input_tokens'):.0f}"


def block_table(cells: list[dict]) -> str:
    """Block-scored cells (the default block size) beside the same cells run in one draft pass (``--block-size``
    at least the prompt), per task: scores, kept tokens and draft seconds per record."""
    single = [c for c in cells if c.get("block_size")]
    same = [k for k in CELL_KEYS if k != "block_size"]
    blocked = {tuple(c.get(k) for k in same): c for c in cells if not c.get("block_size")}
    pairs = [(blocked[key], c) for c in single if (key := tuple(c.get(k) for k in same)) in blocked]
    if not pairs:
        return ""
    head = ["pair", "tokens", "method", "task", f"blocks of {DEFAULT_BLOCK_SIZE}: score", "one pass: score",
            "kept tokens (blocks / one)", "draft s (blocks / one)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rank = {t: i for i, t in enumerate(_task_order(b["task"] for b, _ in pairs))}
    for b, o in sorted(pairs, key=lambda p: (p[0]["pair"], p[0]["length"], rank[p[0]["task"]], label(p[0]))):
        lines.append(
            f"| {b['pair']} | {b['length']} | {label(b)} | {b['task']} | {b['score']:.1f} | {o['score']:.1f} | "
            f"{b['avg_kept_tokens']:.0f} / {o['avg_kept_tokens']:.0f} | "
            f"{b['seconds']['draft']:.1f} / {o['seconds']['draft']:.1f} |"
        )
    mean = lambda cs: sum(c["score"] for c in cs) / len(cs)  # noqa: E731
    lower = sum(b["score"] < o["score"] for b, o in pairs)
    higher = sum(b["score"] > o["score"] for b, o in pairs)
    in_blocks, in_one = mean([b for b, _ in pairs]), mean([o for _, o in pairs])
    lines += [
        "",
        f"{len(pairs)} cells: mean score {in_blocks:.1f} in blocks, {in_one:.1f} in one pass; blocks lower in "
        f"{lower}, higher in {higher}, equal in {len(pairs) - lower - higher}.",
    ]
    return "\n".join(lines)


def follow_up_table(cells: list[dict]) -> str:
    """Cells that asked follow-up questions: the first questions' score and draft seconds beside the follow-ups'."""
    asked = [c for c in cells if c.get("follow_up")]
    if not asked:
        return ""
    head = ["pair", "tokens", "method", "task", "records", "follow-ups", "first: score", "follow-ups: score",
            "first: draft s", "follow-up: draft s", "follow-up / first", "draft tokens reused"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in sorted(asked, key=lambda c: (c["pair"], c["length"], c["task"], _sort_key(c))):
        f = c["follow_up"]
        first, then = f["first_draft_s"], f["seconds"]["draft"]
        share = f"{then / first:.2f}x" if first else ""
        reused = f"{100 * f['cached_tokens'] / f['draft_tokens']:.0f}%" if f["draft_tokens"] else ""
        lines.append(
            f"| {c['pair']} | {c['length']} | {label(c)} | {c['task']} | {c['n']} | {f['questions']} | "
            f"{c['score']:.1f} | {f['score']:.1f} | {first:.2f} | {then:.2f} | {share} | {reused} |"
        )
    return "\n".join(lines)


def faithfulness_table(cells: list[dict]) -> str:
    """Per (pair, length, row) of the prompt-shortening cells that counted them: statements of the compressed
    prompts that their contexts do not make (``draft_rag.faithfulness``), over all records, per task."""
    counted = [c for c in cells if "unsupported" in c]
    if not counted:
        return ""
    out = ["| pair | tokens | method @ budget | tasks | records | unsupported statements | per task |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for pair, length, _, tasks, rows in _by_pair_and_length(counted):
        for name, by_task in rows.items():
            per = ", ".join(f"{t} {by_task[t]['unsupported']}" for t in tasks if t in by_task)
            total = sum(c["unsupported"] for c in by_task.values())
            out.append(f"| {pair} | {length} | {name} | {len(by_task)} | {sum(c['n'] for c in by_task.values())} | "
                       f"{total} | {per} |")  # fmt: skip
    return "\n".join(out)


def chunk_table(rows: list[dict]) -> str:
    """Chunk-pruning results: recall of the gold chunk and answer accuracy per ranker and keep ratio."""
    if not rows:
        return ""
    head = ["ranker", "keep", "gold recall %", "answer score", "rank s/query", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(
            f"| {r['ranker']} | 1/{round(1 / r['keep'])} | {r['recall']:.1f} | "
            f"{'' if r.get('score') is None else format(r['score'], '.1f')} | {r['rank_seconds']:.2f} | {r['n']} |"
        )
    return "\n".join(lines)


def plot(cells: list[dict], path) -> Path:
    """Left: mean score vs kept fraction of the prompt per method; right: seconds per stage per method@budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(dict.fromkeys(c["pair"] for c in cells))
    fig, axes = plt.subplots(len(pairs), 2, figsize=(13, 4.2 * len(pairs)), squeeze=False)
    for row, pair in enumerate(pairs):
        group = [c for c in cells if c["pair"] == pair]
        keys = defaultdict(set)
        for c in group:
            keys[label(c)].add((c["task"], c["length"]))
        common = set.intersection(*keys.values())  # average every method over the same tasks
        group = [c for c in group if (c["task"], c["length"]) in common]
        by_label = defaultdict(list)
        for c in sorted(group, key=_sort_key):
            by_label[label(c)].append(c)
        points = defaultdict(list)
        for cs in by_label.values():
            kept = sum(c["avg_kept_tokens"] / max(1, c["avg_input_tokens"]) for c in cs) / len(cs)
            points[cs[0]["method"]].append((kept, sum(c["score"] for c in cs) / len(cs)))
        ax = axes[row][0]
        for method, pts in points.items():
            pts.sort()
            reference = method in REGISTRY and REGISTRY[method].reference  # results may hold retired methods
            style = dict(marker="*", markersize=14, linestyle="none") if reference else dict(marker="o")
            style["color"] = f"C{ORDER.index(method) % 10}" if method in ORDER else None
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=method, **style)
        ax.set_xlabel("kept fraction of the prompt (tokens or KV entries)")
        ax.set_ylabel("score (RULER's metric, 0-100), mean over tasks")
        ax.set_title(f"{pair}: score vs budget")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax = axes[row][1]
        names = list(by_label)
        draft = [sum(c["seconds"]["draft"] for c in by_label[n]) / len(by_label[n]) for n in names]
        total = [sum(c["seconds"]["total"] for c in by_label[n]) / len(by_label[n]) for n in names]
        ax.barh(names, draft, label="draft / compressor")
        ax.barh(names, [t - d for t, d in zip(total, draft)], left=draft, label="target (prefill + decode)")
        ax.set_xlabel("seconds per record (mean)")
        ax.set_title(f"{pair}: time per stage")
        ax.invert_yaxis()
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(data: dict, out_dir) -> dict:
    """Write ``results.md`` and ``results.png`` beside ``results.json``; returns their paths."""
    out = Path(out_dir)
    md = ["# draft-rag bench results", ""]
    cells = [c for c in data.get("results") or [] if not c.get("follow_ups")]  # follow-up cells: their own table
    if cells:
        md += [grid_table(cells), "", "![score vs budget and time per stage](results.png)", ""]
        md += ["## Summary (mean scores; niah = the mean of the niah tasks)", "", summary_table(cells), ""]
        plot(cells, out / "results.png")
    blocks = block_table(cells)
    if blocks:
        md += ["## Block scoring vs one draft pass (the same cells, the draft's block size set)", "", blocks, ""]
    asked = follow_up_table(data.get("results") or [])
    if asked:
        md += ["## Follow-up questions over the same context (each key of a haystack asked on its own)", "", asked, ""]
    faithful = faithfulness_table(cells)
    if faithful:
        md += ["## Faithfulness (statements of the compressed prompts that their contexts do not make)", "",
               "Counted since issue 39 (`draft_rag.faithfulness.unsupported`); cells run before it did not count.",
               "", faithful, ""]  # fmt: skip
    if data.get("chunks"):
        md += [
            "## Chunk pruning (gold-chunk recall and answer score by keep ratio)",
            "",
            chunk_table(data["chunks"]),
            "",
        ]
    if data.get("overhead"):
        md += [
            "## SpecPC draft pass vs a plain draft forward",
            "",
            "| pair | tokens | records | plain forward s | SpecPC draft s | overhead |",
            "|---|---|---|---|---|---|",
        ]
        md += [
            f"| {r['pair']} | {r['length']} | {r['n']} | {r['plain_forward_s']:.2f} | {r['specpc_draft_s']:.2f} | "
            f"{r['overhead_pct']:+.0f}% |"
            for r in data["overhead"]
        ]
        md.append("")
    (out / "results.md").write_text("\n".join(md))
    return {"markdown": out / "results.md", "plot": out / "results.png", "json": out / "results.json"}
