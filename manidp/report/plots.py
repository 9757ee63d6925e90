"""Figures of one dataset, each saved as PNG and PDF (matplotlib, Agg backend):

* ``top1_vs_macs``: top-1 accuracy against the MACs kept (% of the dense conv+FC MACs), one panel
  per architecture: every published method of the paper's table, and ours with error bars;
* ``macs_histogram``: the distribution of per-instance MACs of every ManiDP model (per seed);
* ``keep_rates``: the mean fraction of channels each gate keeps, per layer (mean over seeds).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from . import published as pub  # noqa: E402

FORMATS = ("png", "pdf")


def save(fig, stem: str | Path, formats=FORMATS) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf``; close the figure."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _title(text: str, label: str, smoke: bool) -> str:
    """A short-budget run (``smoke: true``) says so, by its budget: the smoke config (label
    ``smoke``) is a SMOKE RUN, any other one (the CPU study) is named by its label."""
    if not smoke:
        return text
    budget = "SMOKE RUN (pipeline check)" if label in ("", "smoke") else label
    return f"{text}\n{budget}: short budget, not comparable with the published numbers"


def label_column(ax, points: list[tuple[float, float]], texts: list[str], colours: list | None = None,
                 fontsize: float = 6.5) -> list:
    """Label the points of ``ax`` in a column right of the axes, each joined to its point by a
    leader line. The labels are placed in the order of their points' y and at least one text line
    apart, so they cannot overlap each other, the data, or labels of other panels stacked in one
    column: placed upwards from the lowest point, then downwards from the top of the axes, every
    two labels stay one line apart. Call it once the axes' limits and the figure's layout are final."""
    if not points:
        return []
    fig = ax.figure
    fig.canvas.draw()                                    # final axes position and limits
    to_axes = ax.transData + ax.transAxes.inverted()
    height_pt = ax.get_position().height * fig.get_figheight() * 72
    step = fontsize * 1.7 / height_pt                    # one text line and a gap, in axes fraction
    order = sorted(range(len(points)), key=lambda i: to_axes.transform(points[i])[1])
    placed: list[float] = []
    for i in order:
        y = float(to_axes.transform(points[i])[1])
        placed.append(max(y, placed[-1] + step) if placed else y)
    placed[-1] = min(placed[-1], 1.0)                    # then down from the top: the column stays
    for k in range(len(placed) - 2, -1, -1):             # within the axes' height while it fits there
        placed[k] = min(placed[k], placed[k + 1] - step)
    colours = colours or ["black"] * len(points)
    out = []
    for i, y in zip(order, placed):
        out.append(ax.annotate(texts[i], xy=points[i], xycoords="data", xytext=(1.03, y),
                               textcoords="axes fraction", ha="left", va="center", fontsize=fontsize,
                               color=colours[i], annotation_clip=False,
                               arrowprops=dict(arrowstyle="-", color="0.6", linewidth=0.5, shrinkA=0, shrinkB=3)))
    return out


def _panels(n: int, width: float = 4.2, height: float = 3.6, max_cols: int = 3):
    cols = min(max(n, 1), max_cols)
    rows = math.ceil(max(n, 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat


def _empty(fig, ax, message: str):
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)


STYLES = {"baseline": dict(marker="s", color="black"), "ManiDP": dict(marker="*", color="tab:red", markersize=11),
          "dynamic": dict(marker="^", color="tab:blue"), "static": dict(marker="o", color="tab:gray"),
          "ours": dict(marker="D", color="tab:green")}
LEGEND = (("baseline", "baseline (published)"), ("static", "static pruning (published)"),
          ("dynamic", "dynamic pruning (published)"), ("ManiDP", "ManiDP (published)"), ("ours", "ours, regenerated"))


def _style(r) -> str:
    if r["method"] == pub.BASELINE:
        return "baseline"
    if r["method"].startswith("ManiDP"):
        return "ManiDP"
    return "dynamic" if r["dynamic"] == "yes" else "static"


def top1_vs_macs(summary: pd.DataFrame, published: pd.DataFrame, dataset: str, label: str = "",
                 smoke: bool = False):
    """One panel per architecture (stacked, so that each panel's label column has the width beside
    it): every published method of the table and ours, labelled in a column with leader lines; the
    legend above the panels, outside every axes."""
    table = pub.rows(published, dataset)
    archs = list(dict.fromkeys(table["arch"]))
    fig, axes = _panels(len(archs), width=6.0, height=3.4, max_cols=1)
    labels = []
    for ax, arch in zip(axes, archs):
        points, texts, colours = [], [], []
        for _, r in table[table["arch"] == arch].iterrows():
            x, y = 100.0 - r["flops_reduction_pct"], 100.0 - r["top1_err"]
            style = STYLES[_style(r)]
            ax.plot([x], [y], linestyle="none", **style)
            points.append((x, y))
            texts.append(r["method"])
            colours.append(style["color"])
        ours = summary[(summary["dataset"] == dataset) & (summary["arch"] == arch)]
        for _, s in ours.iterrows():
            x = 100.0 - s["reduction_pct_mean"]
            y = 100.0 - s["top1_err_mean"]
            xerr = s["reduction_pct_std"] if pd.notna(s["reduction_pct_std"]) else None
            yerr = s["top1_err_std"] if pd.notna(s["top1_err_std"]) else None
            ax.errorbar([x], [y], xerr=xerr, yerr=yerr, capsize=3, linestyle="none", **STYLES["ours"])
            points.append((x, y))
            texts.append(f"{s['published'] or s['variant']} (ours, {s['point'] or 'dense'}, n={int(s['n'])})")
            colours.append(STYLES["ours"]["color"])
        ax.set_title(pub.model_name(arch), fontsize=10)
        ax.set_xlabel("MACs kept (% of dense conv+FC)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.margins(x=0.08, y=0.08)
        labels.append((ax, points, texts, colours))
    handles = [plt.Line2D([], [], linestyle="none", label=text, **{**STYLES[key], "markersize": 7})
               for key, text in LEGEND]
    fig.suptitle(_title(f"{pub.DATASET_NAMES[dataset]}: top-1 vs MACs", label, smoke), fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.72, 0.90))
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize=7, bbox_to_anchor=(0.4, 0.935))
    for ax, points, texts, colours in labels:
        label_column(ax, points, texts, colours)
    return fig


def macs_histogram(evals: list[tuple[dict, dict]], dataset: str, label: str = "", smoke: bool = False):
    """``evals``: (run description, eval JSON) of the pruned runs."""
    groups: dict[tuple[str, str], list] = {}
    for spec, result in evals:
        groups.setdefault((spec["arch"], spec["published"] or spec["variant"]), []).append((spec, result))
    fig, axes = _panels(len(groups))
    if not groups:
        _empty(fig, axes[0], "no pruned model measured")
    for ax, ((arch, method), items) in zip(axes, groups.items()):
        dense = None
        for spec, result in items:
            h = result["macs"]["histogram"]
            edges = [e / 1e6 for e in h["edges"]]
            ax.stairs(h["counts"], edges, label=spec["run"])
            dense = result["macs"]["dense_macs"] / 1e6
            ax.axvline(result["macs"]["macs_mean"] / 1e6, linestyle="--", linewidth=0.8)
        ax.set_title(f"{pub.model_name(arch)} {method} (dense {dense:.1f}M)", fontsize=9)
        ax.set_xlabel("MACs per instance (M, conv+FC)")
        ax.set_ylabel("instances")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(_title(f"{pub.DATASET_NAMES[dataset]}: per-instance MACs (dashed: mean)", label, smoke),
                 fontsize=10)
    fig.tight_layout()
    return fig


def keep_rates(evals: list[tuple[dict, dict]], dataset: str, label: str = "", smoke: bool = False):
    """Per-gate keep rate (kept / all channels, averaged over the evaluation set), mean over seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for spec, result in evals:
        groups.setdefault((spec["arch"], spec["published"] or spec["variant"]), []).append(
            result["macs"].get("keep_rates", {}))
    fig, axes = _panels(len(groups), width=5.0)
    if not groups:
        _empty(fig, axes[0], "no pruned model measured")
    for ax, ((arch, method), rates) in zip(axes, groups.items()):
        df = pd.DataFrame(rates)
        if df.empty:
            _empty(fig, ax, "no gates")
            continue
        mean, std = df.mean(), df.std(ddof=1) if len(df) > 1 else None
        ax.bar(range(len(mean)), mean.values, yerr=None if std is None else std.values, capsize=2,
               color="tab:blue")
        ax.set_xticks(range(len(mean)))
        ax.set_xticklabels(mean.index, rotation=90, fontsize=5)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("keep rate")
        ax.set_title(f"{pub.model_name(arch)} {method} (n={len(df)})", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(_title(f"{pub.DATASET_NAMES[dataset]}: per-layer keep rates", label, smoke), fontsize=10)
    fig.tight_layout()
    return fig
