"""Published vs regenerated: every number we regenerate, with its difference and a status.

Tolerance rules (the numbers are config keys under ``tolerance``):

* errors and gaps (top-1/top-5, in points): within tolerance when
  ``|ours_mean - published| <= max(err_pt, std_factor * ours_std)`` (default 0.5 pt, 2 std);
  otherwise "better" when ours is lower, "worse" when higher;
* MAC reduction (in points of %): within tolerance when ``|ours_mean - published| <= macs_pt``
  (default 2 pt); otherwise "better" when ours removes more, "worse" when less.

A status is one of ``within tolerance``, ``better``, ``worse``, ``not comparable`` (a smoke run,
always; or no published value; or nothing measured). A smoke run is never a pass.

Rows of kind ``published-inconsistency`` are not ours: they flag printed gaps that disagree with
their own error columns (:func:`manidp.report.published.inconsistencies`), status ``flagged``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from ..tolerance import MAC_TOLERANCE_PT as TOLERANCE_PT
from . import published as pub

OFF_TARGET = "off its own MAC target"   # note of a row whose MAC reduction misses its target
WITHIN, BETTER, WORSE, NOT_COMPARABLE, FLAGGED = (
    "within tolerance", "better", "worse", "not comparable", "flagged")
STATUSES = (WITHIN, BETTER, WORSE, NOT_COMPARABLE)

# metric name -> (column in summary.csv without _mean/_std, column in published.csv, title)
METRICS = {
    "top1_err": ("top1_err", "top1_err", "top-1 error (%)"),
    "top5_err": ("top5_err", "top5_err", "top-5 error (%)"),
    "top1_gap": ("top1_gap", "top1_gap", "top-1 gap to baseline (pt)"),
    "top5_gap": ("top5_gap", "top5_gap", "top-5 gap to baseline (pt)"),
    "mac_reduction": ("reduction_pct", "flops_reduction_pct", "MAC reduction (%)"),
}
COLUMNS = ("kind", "dataset", "arch", "method", "variant", "metric", "published", "published_source",
           "ours_mean", "ours_std", "n", "difference", "tolerance", "status", "note")


@dataclass(frozen=True)
class Tolerance:
    err_pt: float = 0.5
    std_factor: float = 2.0
    macs_pt: float = 2.0

    def rule(self, metric: str) -> str:
        if metric == "mac_reduction":
            return f"abs(diff) <= {self.macs_pt:g} pt"
        return f"abs(diff) <= max({self.err_pt:g} pt, {self.std_factor:g} x std)"

    def status(self, metric: str, published: float, mean: float, std: float) -> str:
        diff = mean - published
        if metric == "mac_reduction":
            allowed, lower_is_better = self.macs_pt, False
        else:
            allowed = max(self.err_pt, self.std_factor * std if _finite(std) else 0.0)
            lower_is_better = True
        if abs(diff) <= allowed + 1e-9:
            return WITHIN
        return BETTER if (diff < 0) == lower_is_better else WORSE


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x)) and not pd.isna(x)


def _published_value(ref: dict | None, base: dict | None, metric: str) -> tuple[float, str]:
    """The printed value; for an unprinted gap, the difference of the printed error columns."""
    if ref is None:
        return math.nan, ""
    col = METRICS[metric][1]
    value = ref.get(col)
    if _finite(value):
        return float(value), "printed"
    if metric.endswith("_gap") and base is not None:
        err = metric.replace("gap", "err")
        if _finite(ref.get(err)) and _finite(base.get(err)):
            return round(float(ref[err]) - float(base[err]), 2), "derived from the printed errors"
    return math.nan, ""


def compare(summary: pd.DataFrame, published: pd.DataFrame, dataset: str, tolerance: Tolerance,
            smoke: bool) -> pd.DataFrame:
    """The comparison table of one dataset (regenerated rows, then the published-table flags)."""
    rows = []
    for _, s in summary[summary["dataset"] == dataset].iterrows():
        method = s["published"] or ("Baseline" if s["variant"] == "baseline" else "")
        ref = pub.lookup(published, dataset, s["arch"], method)
        base = pub.lookup(published, dataset, s["arch"], pub.BASELINE)
        metrics = ("top1_err", "top5_err") if s["variant"] == "baseline" else tuple(METRICS)
        for metric in metrics:
            col = METRICS[metric][0]
            mean, std, n = s.get(f"{col}_mean", math.nan), s.get(f"{col}_std", math.nan), int(s["n"])
            value, source = _published_value(ref, base, metric)
            diff = mean - value if _finite(mean) and _finite(value) else math.nan
            if smoke:
                status, note = NOT_COMPARABLE, "smoke run: a few hundred steps on a data subset, not a reproduction"
            elif not _finite(mean) or n == 0:
                status, note = NOT_COMPARABLE, "not measured"
            elif not _finite(value):
                status, note = NOT_COMPARABLE, "no published value"
            else:
                status, note = tolerance.status(metric, value, float(mean), std), ""
            if metric == "mac_reduction" and s.get("on_target") is False:
                note = (f"{OFF_TARGET} ({float(s['target_reduction']):.1f}%) by more than "
                        f"{TOLERANCE_PT} pp: not an equal-MAC comparison")
            rows.append({"kind": "regenerated", "dataset": dataset, "arch": s["arch"], "method": method,
                         "variant": s["variant"], "metric": metric, "published": value,
                         "published_source": source, "ours_mean": mean, "ours_std": std, "n": n,
                         "difference": diff, "tolerance": tolerance.rule(metric), "status": status,
                         "note": note})
    for inc in pub.inconsistencies(published, dataset):
        rows.append({"kind": "published-inconsistency", "dataset": dataset, "arch": inc.arch,
                     "method": inc.method, "variant": "", "metric": inc.metric, "published": inc.printed,
                     "published_source": "printed", "ours_mean": math.nan, "ours_std": math.nan, "n": 0,
                     "difference": round(inc.printed - inc.recomputed, 2),
                     "tolerance": "printed gap = error - baseline error (+-0.01 rounding)",
                     "status": FLAGGED, "note": inc.describe()})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _fmt(x, signed: bool = False) -> str:
    if not _finite(x):
        return "-"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def to_markdown(df: pd.DataFrame, dataset: str, label: str, smoke: bool, tolerance: Tolerance,
                data_sources: list[str]) -> str:
    """``comparison.md``: the regenerated numbers, the flags of the published table, the rules."""
    name = pub.DATASET_NAMES.get(dataset, dataset)
    table = pub.TABLE_NUMBERS.get(dataset, "?")
    lines = [f"# {name}: regenerated vs published (Table {table}){' - SMOKE RUN' if smoke else ''}", ""]
    if smoke:
        lines += [f"**Smoke run ({label}).** Every status is \"not comparable\": these models were trained "
                  "for a few hundred steps on a data subset to exercise the pipeline; they are not a "
                  "reproduction.", ""]
    if data_sources:
        lines += ["Evaluated on: " + "; ".join(data_sources) + ".", ""]
    lines += ["| model | method | metric | published | ours (mean +- std) | n | difference | tolerance | status |",
              "|---|---|---|---:|---:|---:|---:|---|---|"]
    ours = df[df["kind"] == "regenerated"]
    for _, r in ours.iterrows():
        std = f" +- {r['ours_std']:.2f}" if _finite(r["ours_std"]) else ""
        pubv = _fmt(r["published"]) + (" (derived)" if r["published_source"].startswith("derived") else "")
        off = str(r["note"]).startswith(OFF_TARGET)      # shown in smoke runs too
        status = r["status"] + (f" ({r['note']})" if r["note"] and (off or not smoke) else "")
        lines.append(f"| {pub.model_name(r['arch'])} | {r['method']} | {METRICS[r['metric']][2]} | {pubv} | "
                     f"{_fmt(r['ours_mean'])}{std} | {r['n']} | {_fmt(r['difference'], True)} | "
                     f"{r['tolerance']} | {status} |")
    flags = df[df["kind"] == "published-inconsistency"]
    lines += ["", "## Inconsistencies in the published table", ""]
    if flags.empty:
        lines.append("None: every printed gap of this table equals the difference of its error columns.")
    for _, r in flags.iterrows():
        lines.append(f"- **flagged**: {r['note']} (difference printed - recomputed: {_fmt(r['difference'], True)}).")
    lines += ["", "## Rules", "",
              f"- Errors and gaps: within tolerance when {tolerance.rule('top1_err')}; otherwise better "
              f"(ours lower) or worse.",
              f"- MAC reduction: within tolerance when {tolerance.rule('mac_reduction')}; otherwise better "
              f"(ours removes more) or worse.",
              "- Ours: the final model with its final thresholds (no best-epoch selection); std is the "
              "sample std over seeds (empty for one seed). Gaps are paired with the baseline each model "
              "was pruned from.",
              "- MACs: multiply-accumulates of conv and FC layers per instance, averaged over the "
              "evaluation set; gate MACs are reported separately (summary.csv: gate_macs, gate_pct) and "
              "not included.",
              "- A gap the paper does not print (Table 4) is derived from its printed error columns "
              "and marked \"derived\".", ""]
    return "\n".join(lines)
