"""Per-run measurements (``eval.json`` of ``manidp evaluate``) -> ``runs.csv`` and ``summary.csv``.

``runs.csv`` has one row per evaluated model; ``summary.csv`` one row per (dataset, architecture,
method/operating point) with mean, std (sample std, ddof=1; empty for one seed) and n over seeds.

Errors are 100 - accuracy, in percentage points. The gap of a pruned run is its error minus the
error of the very baseline it was pruned from (same seed; or the torchvision weights), so the gap
is paired per seed before it is averaged.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ManidpError

METRICS = ("top1_err", "top5_err", "top1_gap", "top5_gap", "reduction_pct", "macs_mean", "gate_pct")
KEYS = ("dataset", "arch", "variant", "point", "published")


def read_eval(path: str | Path) -> dict:
    """Load one eval JSON; a missing, truncated or foreign file is one line that says what to do."""
    path = Path(path)
    fix = "delete it and rerun snakemake with --forcerun aggregate (only the missing steps run again)"
    if not path.is_file():
        raise ManidpError(f"{path}: missing; rerun snakemake to measure it")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManidpError(f"{path}: not valid JSON ({e.msg if hasattr(e, 'msg') else type(e).__name__}); "
                          f"the file is truncated or corrupt: {fix}") from None
    if not isinstance(data, dict) or not all(k in data for k in ("top1", "top5", "macs")) \
            or not all(k in data["macs"] for k in ("macs_mean", "dense_macs", "reduction_pct")):
        raise ManidpError(f"{path}: not an evaluation result of `manidp evaluate` (needs top1, top5, "
                          f"macs.macs_mean, macs.dense_macs, macs.reduction_pct): {fix}")
    return data


def run_row(spec: dict, result: dict) -> dict:
    """One ``runs.csv`` row from a run's description (``spec``) and its eval JSON."""
    m = result["macs"]
    dense = float(m["dense_macs"])
    return {
        **{k: spec.get(k, "") for k in KEYS},
        "run": spec["run"], "seed": spec.get("seed"), "baseline_run": spec.get("baseline_run", ""),
        "top1": float(result["top1"]), "top5": float(result["top5"]),
        "top1_err": 100.0 - float(result["top1"]), "top5_err": 100.0 - float(result["top5"]),
        "loss": result.get("loss"), "instances": result.get("instances"),
        "macs_mean": float(m["macs_mean"]), "macs_std": m.get("macs_std"),
        "macs_min": m.get("macs_min"), "macs_max": m.get("macs_max"),
        "dense_macs": dense, "gate_macs": float(m.get("gate_macs", 0.0)),
        "gate_pct": 100.0 * float(m.get("gate_macs", 0.0)) / dense if dense else math.nan,
        "reduction_pct": float(m["reduction_pct"]),
        "target_reduction": spec.get("target_reduction"),
        "epochs": result.get("epochs"),
        # False when the realized reduction misses the run's own target by more than the tolerance
        "on_target": result.get("on_target"), "reduction_miss_pt": result.get("reduction_miss_pt"),
        "data_source": result.get("data_source", ""),
        "eval_json": str(spec["eval"]),
    }


def all_on_target(values) -> bool | None:
    """False if any run missed its MAC target by more than the tolerance, True if all hit it, None
    when none had a target (baselines, older eval JSONs; NaN once read back from a CSV)."""
    flags = [bool(v) for v in values if isinstance(v, (bool, np.bool_))]
    return all(flags) if flags else None


def collect(specs: list[dict]) -> pd.DataFrame:
    """``runs.csv``: read every run's eval JSON; add the gap to its own baseline."""
    rows = [run_row(s, read_eval(s["eval"])) for s in specs]
    df = pd.DataFrame(rows)
    base = {(r["dataset"], r["arch"], r["run"]): r for r in rows if r["variant"] == "baseline"}
    gaps1, gaps5 = [], []
    for r in rows:
        if r["variant"] == "baseline":
            gaps1.append(0.0)
            gaps5.append(0.0)
            continue
        b = base.get((r["dataset"], r["arch"], r["baseline_run"]))
        if b is None:
            raise ManidpError(f"{r['eval_json']}: its baseline ({r['dataset']} {r['arch']} "
                              f"{r['baseline_run']}) was not measured; add it to the inputs")
        gaps1.append(r["top1_err"] - b["top1_err"])
        gaps5.append(r["top5_err"] - b["top5_err"])
    df["top1_gap"], df["top5_gap"] = gaps1, gaps5
    return df


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """``summary.csv``: mean, std (ddof=1) and n over seeds for every metric of every row."""
    out = []
    for key, g in runs.groupby(list(KEYS), sort=False, dropna=False):
        row = dict(zip(KEYS, key))
        row["n"] = len(g)
        row["runs"] = " ".join(str(r) for r in g["run"])
        for metric in METRICS:
            values = g[metric].astype(float)
            row[f"{metric}_mean"] = float(values.mean())
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        for col in ("dense_macs", "gate_macs", "target_reduction", "epochs"):
            row[col] = g[col].iloc[0] if col in g else None
        row["on_target"] = all_on_target(g["on_target"])
        row["data_source"] = "; ".join(sorted(set(str(s) for s in g["data_source"])))
        out.append(row)
    return pd.DataFrame(out)


def read_csv(path: str | Path, what: str) -> pd.DataFrame:
    """Read an intermediate CSV of the workflow, with a one-line error if it is damaged."""
    path = Path(path)
    try:
        df = pd.read_csv(path, keep_default_na=True)
    except FileNotFoundError:
        raise ManidpError(f"{path}: missing; rerun snakemake to make it") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ManidpError(f"{path}: not a readable {what} CSV ({type(e).__name__}); the file is "
                          f"truncated or corrupt: delete it and rerun snakemake with --forcerun aggregate") from None
    need = {"dataset", "arch", "variant"}
    if not need <= set(df.columns):
        raise ManidpError(f"{path}: not a {what} CSV (needs columns {', '.join(sorted(need))}): "
                          f"delete it and rerun snakemake with --forcerun aggregate")
    for k in ("point", "published", "runs", "data_source"):
        if k in df.columns:
            df[k] = df[k].fillna("").astype(str)
    return df
