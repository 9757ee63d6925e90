"""Methods side by side (the benchmark view of ``runs.csv``): ``methods.csv``, ``methods.md`` and
the ``methods`` plot.

One row per (architecture, method, operating point) over its seeds: top-1 mean, sample std (ddof=1)
and best of n (labelled as such: the published numbers are most likely single or best runs), the
top-1 change against each run's own baseline (paired per seed), mean MACs and MAC reduction. The
method of a run is the part of its variant before the point (``fbs-paper`` -> ``fbs``).
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..tolerance import MAC_TOLERANCE_PT  # noqa: E402
from . import published as pub  # noqa: E402
from .aggregate import all_on_target  # noqa: E402
from .plots import _panels, _title, label_column  # noqa: E402

COLUMNS = ("dataset", "arch", "method", "point", "published", "n", "seeds", "epochs", "target_reduction", "on_target",
           "top1_mean", "top1_std", "top1_best", "top1_change_mean", "top1_change_std",
           "macs_mean_m", "reduction_pct_mean", "reduction_pct_std")


def method_of(variant: str) -> str:
    return "baseline" if variant == "baseline" else variant.rsplit("-", 1)[0]


def _std(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def method_table(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs.csv`` -> one row per (dataset, arch, method, point), in the order the runs are listed."""
    runs = runs.assign(method=runs["variant"].map(method_of), change=-runs["top1_gap"].astype(float))
    out = []
    for (dataset, arch, method, point), g in runs.groupby(["dataset", "arch", "method", "point"],
                                                         sort=False, dropna=False):
        top1 = g["top1"].astype(float)
        out.append({
            "dataset": dataset, "arch": arch, "method": method, "point": point or "",
            "published": g["published"].iloc[0] if "published" in g else "", "n": len(g),
            "seeds": " ".join(str(r) for r in g["run"]),
            "epochs": _first(g, "epochs"),
            "target_reduction": float(g["target_reduction"].iloc[0] or 0.0),
            "on_target": all_on_target(g["on_target"]) if "on_target" in g else None,
            "top1_mean": float(top1.mean()), "top1_std": _std(top1), "top1_best": float(top1.max()),
            "top1_change_mean": float(g["change"].mean()), "top1_change_std": _std(g["change"]),
            "macs_mean_m": float(g["macs_mean"].astype(float).mean()) / 1e6,
            "reduction_pct_mean": float(g["reduction_pct"].astype(float).mean()),
            "reduction_pct_std": _std(g["reduction_pct"].astype(float)),
        })
    return pd.DataFrame(out, columns=list(COLUMNS))


def _first(g: pd.DataFrame, col: str):
    if col not in g or pd.isna(g[col].iloc[0]):
        return None
    return int(g[col].iloc[0])


def _pm(mean: float, std: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def method_table_md(table: pd.DataFrame, title: str, label: str = "", smoke: bool = False,
                    source: str = "") -> str:
    """The table as Markdown, one section per architecture."""
    lines = [f"**{title}**" + (f" — {label}" if label else ""), ""]
    if smoke:
        lines += ["Small-budget runs: compare the methods with each other, not with published numbers.", ""]
    if source:
        lines += [f"Evaluated on {source}.", ""]
    lines += ["Top-1 in %: mean ± sample std over the seeds, and the best of the n seeds (labelled: "
              "not a mean). Change: top-1 minus the top-1 of the same seed's dense baseline. "
              "MACs: conv+FC multiply-accumulates per instance, mean over the test set.", ""]
    for arch, g in table.groupby("arch", sort=False):
        lines += [f"*{pub.model_name(arch)}*", "",
                  "| method | point | epochs | target MAC ↓ (%) | n | top-1 (%) | best of n | change (pt) | MACs (M) | MAC ↓ (%) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for _, r in g.iterrows():
            target = "-" if r["method"] == "baseline" else f"{r['target_reduction']:.1f}"
            change = "-" if r["method"] == "baseline" else _pm(r["top1_change_mean"], r["top1_change_std"])
            off = " (**off target**)" if r.get("on_target") is False else ""
            epochs = "-" if r.get("epochs") is None or pd.isna(r.get("epochs")) else int(r["epochs"])
            lines.append(f"| {r['method']} | {r['point'] or '-'} | {epochs} | {target} | {r['n']} | "
                         f"{_pm(r['top1_mean'], r['top1_std'])} | {r['top1_best']:.2f} | {change} | "
                         f"{r['macs_mean_m']:.2f} | {_pm(r['reduction_pct_mean'], r['reduction_pct_std'], 1)}{off} |")
        lines.append("")
        if (g["on_target"] == False).any():  # noqa: E712 (pandas object column)
            lines += [f"Off target: the realized MAC reduction misses the row's target by more than "
                      f"{MAC_TOLERANCE_PT} pp, so it is not an equal-MAC comparison.", ""]
    return "\n".join(lines)


def method_curves(runs: pd.DataFrame, published: pd.DataFrame, dataset: str, label: str = "",
                  smoke: bool = False):
    """Top-1 against MACs kept, one panel per architecture: every method's operating points joined
    in MAC order (mean ± std over seeds as error bars, every seed as a faint dot), the dense
    baselines, and the published point of each method that regenerates a published row (hollow)."""
    runs = runs[runs["dataset"] == dataset].assign(method=lambda d: d["variant"].map(method_of))
    runs = runs.assign(kept=100.0 - runs["reduction_pct"].astype(float), top1=runs["top1"].astype(float))
    archs = list(dict.fromkeys(runs["arch"]))
    table = pub.rows(published, dataset)
    fig, axes = _panels(len(archs), width=6.0, height=4.2, max_cols=1)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = []
    for ax, arch in zip(axes, archs):
        mine = runs[runs["arch"] == arch]
        points, texts, text_colours = [], [], []
        for i, (method, g) in enumerate(mine.groupby("method", sort=False)):
            colour = "black" if method == "baseline" else colours[i % len(colours)]
            marker = "s" if method == "baseline" else "o"
            ax.plot(g["kept"], g["top1"], linestyle="none", marker=marker, markersize=3, alpha=0.3, color=colour)
            pts = g.groupby("point", sort=False).agg(kept=("kept", "mean"), top1=("top1", "mean"),
                                                    std=("top1", "std"), n=("top1", "size")).sort_values("kept")
            ax.errorbar(pts["kept"], pts["top1"], yerr=pts["std"].fillna(0.0), marker=marker, color=colour,
                        capsize=3, linewidth=1.2, label=f"{method} (n={'/'.join(str(n) for n in pts['n'])})")
            names = sorted({p for p in g["published"].fillna("") if p})
            for name in names:
                ref = table[(table["arch"] == arch) & (table["method"] == name)]
                for _, r in ref.iterrows():
                    xy = (100.0 - r["flops_reduction_pct"], 100.0 - r["top1_err"])
                    ax.plot([xy[0]], [xy[1]], marker=marker, markersize=8, markerfacecolor="none", color=colour,
                            linestyle="none")
                    points.append(xy)
                    texts.append(f"{name} (published)")
                    text_colours.append(colour)
        ax.set_title(pub.model_name(arch), fontsize=10)
        ax.set_xlabel("MACs kept (% of dense conv+FC)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.margins(x=0.08, y=0.08)
        labels.append((ax, points, texts, text_colours))
    fig.suptitle(_title(f"{pub.DATASET_NAMES[dataset]}: methods, top-1 vs MACs (bars: std over seeds; "
                        f"hollow: published)", label, smoke), fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.62, 0.95))
    for ax, points, texts, text_colours in labels:
        placed = label_column(ax, points, texts, text_colours)
        fig.canvas.draw()
        # the legend right of the label column, outside the axes: it hides no point and no label
        right = max([a.get_window_extent().x1 for a in placed], default=ax.bbox.x1)
        x = ax.transAxes.inverted().transform((right, 0.0))[0] + 0.04
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(x, 1.0), borderaxespad=0.0)
    return fig


BUDGET_METHODS = ("manidp", "fbs", "fpgm")


def budget_curves(runs: pd.DataFrame, dataset: str, label: str = "", smoke: bool = False):
    """Left: top-1 against pruning epochs for ManiDP, FBS and FPGM (mean ± std over seeds, every seed
    a faint dot; dashed: the dense baseline). Right: every method and variant at one budget (the one
    with most rows) as horizontal bars, labelled with their MAC reduction (off-target ones marked)."""
    runs = runs[runs["dataset"] == dataset].assign(method=lambda d: d["variant"].map(method_of))
    runs = runs.assign(top1=runs["top1"].astype(float))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.1, 1]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    base = runs[runs["method"] == "baseline"]
    if not base.empty:
        ax.axhline(base["top1"].mean(), color="black", linestyle="--", linewidth=1,
                   label=f"dense baseline ({base['top1'].mean():.1f}%)")
    pruned = runs[(runs["method"] != "baseline") & runs["epochs"].notna()]
    pruned = pruned.assign(epochs=pruned["epochs"].astype(int))
    for i, method in enumerate(m for m in BUDGET_METHODS if m in set(pruned["method"])):
        g = pruned[pruned["method"] == method]
        ax.plot(g["epochs"], g["top1"], linestyle="none", marker="o", markersize=3, alpha=0.3, color=colours[i])
        pts = g.groupby("epochs").agg(top1=("top1", "mean"), std=("top1", "std"), n=("top1", "size"))
        ax.errorbar(pts.index, pts["top1"], yerr=pts["std"].fillna(0.0), marker="o", color=colours[i], capsize=3,
                    label=f"{method} (n={'/'.join(str(n) for n in pts['n'])})")
    ax.set_xscale("log")
    ticks = sorted(set(pruned["epochs"]))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("pruning epochs (log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("top-1 against pruning budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)   # outside: hides no point
    if not pruned.empty:
        budget = int(pruned["epochs"].value_counts().idxmax())
        at = pruned[pruned["epochs"] == budget].groupby("method", sort=False).agg(
            top1=("top1", "mean"), red=("reduction_pct", "mean"),
            off=("on_target", lambda v: all_on_target(v) is False))
        at = at.sort_values("top1")
        y = range(len(at))
        bx.barh(list(y), at["top1"], color=[colours[BUDGET_METHODS.index(m)] if m in BUDGET_METHODS else "0.6"
                                            for m in at.index])
        bx.set_yticks(list(y), list(at.index), fontsize=7)
        for yi, (_, r) in zip(y, at.iterrows()):
            bx.text(r["top1"] + 0.5, yi, f"{r['top1']:.1f}% @ {r['red']:.1f}% MAC ↓" + (" (off target)" if r["off"] else ""),
                    va="center", fontsize=6)
        bx.set_xlim(0, max(100.0, float(at["top1"].max()) + 25))
        bx.set_xlabel("top-1 accuracy (%)")
        bx.set_title(f"every method and variant at {budget} pruning epochs", fontsize=9)
        bx.grid(alpha=0.3, axis="x")
    fig.suptitle(_title(f"{pub.DATASET_NAMES[dataset]}: pruning budget", label, smoke), fontsize=9)
    fig.tight_layout()
    return fig
