"""The cost bench's plot: speed-up against prompt length per target, and against target/draft size."""

from __future__ import annotations

from pathlib import Path

from ... import methods
from .tables import budget_label


def plot(rows: list[dict], path: Path) -> Path:
    """Left: end-to-end speed-up vs prompt length, one panel per target. Right: speed-up vs target/draft size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({r["shape"] for r in rows}, key=lambda s: next(r["size_ratio"] for r in rows if r["shape"] == s))
    fig, axes = plt.subplots(1, len(shapes) + 1, figsize=(4.2 * (len(shapes) + 1), 3.6), squeeze=False)
    labels = sorted({budget_label(r) for r in rows if not methods.get(r["method"]).reference})
    for ax, shape in zip(axes[0], shapes):
        _curves(ax, [r for r in rows if r["shape"] == shape], labels, "length")
        scaled = any(r["scaled"] for r in rows if r["shape"] == shape)
        ax.set(title=shape + (" (scaled)" if scaled else ""), xlabel="prompt tokens", ylabel="speed-up vs full (e2e)")
        ax.set_xticks(sorted({r["length"] for r in rows if r["shape"] == shape}))
    ax = axes[0][-1]
    # the prompt length run with the most target shapes (the longest among ties)
    longest = max({r["length"] for r in rows}, key=lambda n: (len({r["shape"] for r in rows if r["length"] == n}), n))
    _curves(ax, [r for r in rows if r["length"] == longest], labels, "size_ratio")
    ax.set(
        title=f"{longest}-token prompts",
        xlabel="target / draft parameters",
        ylabel="speed-up vs full (e2e)",
        xscale="log",
    )
    ratios = sorted({r["size_ratio"] for r in rows if r["length"] == longest})
    ax.set_xticks(ratios, [f"{x:.1f}x" for x in ratios])
    ax.minorticks_off()
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _curves(ax, rows: list[dict], labels: list[str], x: str) -> None:
    """One speed-up curve against ``x`` per label with rows, and the line where nothing is gained."""
    for lab in labels:
        pts = sorted((r[x], r["speedup_e2e"]) for r in rows if budget_label(r) == lab)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=lab)
    ax.axhline(1, color="grey", lw=0.8, ls="--")
