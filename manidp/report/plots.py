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
    return f"{text} — SMOKE RUN ({label}): not comparable" if smoke else text


def _panels(n: int, width: float = 4.2, height: float = 3.6):
    cols = min(max(n, 1), 3)
    rows = math.ceil(max(n, 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat


def _empty(fig, ax, message: str):
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)


def top1_vs_macs(summary: pd.DataFrame, published: pd.DataFrame, dataset: str, label: str = "",
                 smoke: bool = False):
    table = pub.rows(published, dataset)
    archs = list(dict.fromkeys(table["arch"]))
    fig, axes = _panels(len(archs))
    for ax, arch in zip(axes, archs):
        rows = table[table["arch"] == arch]
        for _, r in rows.iterrows():
            x, y = 100.0 - r["flops_reduction_pct"], 100.0 - r["top1_err"]
            if r["method"] == pub.BASELINE:
                style = dict(marker="s", color="black")
            elif r["method"].startswith("ManiDP"):
                style = dict(marker="*", color="tab:red", markersize=11)
            elif r["dynamic"] == "yes":
                style = dict(marker="^", color="tab:blue")
            else:
                style = dict(marker="o", color="tab:gray")
            ax.plot([x], [y], linestyle="none", **style)
            ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ours = summary[(summary["dataset"] == dataset) & (summary["arch"] == arch)]
        for _, s in ours.iterrows():
            x = 100.0 - s["reduction_pct_mean"]
            y = 100.0 - s["top1_err_mean"]
            xerr = s["reduction_pct_std"] if pd.notna(s["reduction_pct_std"]) else None
            yerr = s["top1_err_std"] if pd.notna(s["top1_err_std"]) else None
            ax.errorbar([x], [y], xerr=xerr, yerr=yerr, marker="D", color="tab:green", capsize=3,
                        linestyle="none")
            ax.annotate(f"{s['published'] or s['variant']} (ours, n={int(s['n'])})", (x, y), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color="tab:green")
        ax.set_title(pub.model_name(arch))
        ax.set_xlabel("MACs kept (% of dense conv+FC)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker=m, color=c, linestyle="none", label=t) for m, c, t in (
        ("s", "black", "baseline (published)"), ("o", "tab:gray", "static pruning (published)"),
        ("^", "tab:blue", "dynamic pruning (published)"), ("*", "tab:red", "ManiDP (published)"),
        ("D", "tab:green", "ours, regenerated"))]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, bbox_to_anchor=(0.5, -0.04))
    fig.suptitle(_title(f"{pub.DATASET_NAMES[dataset]}: top-1 vs MACs", label, smoke), fontsize=10)
    fig.tight_layout()
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
