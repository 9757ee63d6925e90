"""The paper's published numbers: Table 1 (ImageNet) and Table 4 (CIFAR-10).

The only source is ``paper_tables/published.csv`` (see ``paper_tables/README.md`` for where it was
transcribed from). Values are kept exactly as printed. Where a printed gap disagrees with the
difference of its own error columns, :func:`inconsistencies` flags it; nothing is corrected.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ..errors import ManidpError

# workflow dataset key -> the paper's dataset name, and the paper's table number
DATASET_NAMES = {"cifar10": "CIFAR-10", "imagenet": "ImageNet"}
TABLE_NUMBERS = {"cifar10": 4, "imagenet": 1}

COLUMNS = ("table", "dataset", "model", "method", "ref", "dynamic", "top1_err", "top5_err",
           "top1_gap", "top5_gap", "flops_reduction_pct")
NUMERIC = ("top1_err", "top5_err", "top1_gap", "top5_gap", "flops_reduction_pct")
BASELINE = "Baseline"
# Printed values have two decimals, so a gap computed from two rounded errors may differ from the
# rounded gap by up to 0.01; anything beyond that is an inconsistency of the printed table.
ROUNDING = 0.011


def model_name(arch: str) -> str:
    """``resnet20`` -> ``ResNet-20`` (the paper's spelling)."""
    m = re.fullmatch(r"resnet(\d+)", arch)
    if not m:
        raise ManidpError(f"architecture '{arch}' has no row in the paper's tables")
    return f"ResNet-{m.group(1)}"


def arch_key(model: str) -> str:
    """``ResNet-20`` -> ``resnet20``."""
    return model.lower().replace("-", "")


def load(path: str | Path) -> pd.DataFrame:
    """Read ``published.csv``; add ``dataset_key`` (cifar10/imagenet) and ``arch`` (resnet20...)."""
    path = Path(path)
    if not path.is_file():
        raise ManidpError(f"{path}: published table not found (config key: published)")
    try:
        df = pd.read_csv(path, dtype={"method": str, "model": str, "dataset": str, "ref": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise ManidpError(f"{path}: not a readable CSV ({type(e).__name__}); restore it from git") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ManidpError(f"{path}: missing columns {', '.join(missing)}; restore it from git")
    for c in NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    names = {v: k for k, v in DATASET_NAMES.items()}
    df["dataset_key"] = df["dataset"].map(names)
    df["arch"] = df["model"].map(arch_key)
    df["ref"] = df["ref"].fillna("")
    df["dynamic"] = df["dynamic"].fillna("")
    return df


def rows(df: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The rows of one dataset's table, in the printed order."""
    return df[df["dataset_key"] == dataset]


def lookup(df: pd.DataFrame, dataset: str, arch: str, method: str) -> dict | None:
    """The published row of ``method`` for ``arch`` on ``dataset`` as a dict, or None."""
    hit = df[(df["dataset_key"] == dataset) & (df["arch"] == arch) & (df["method"] == method)]
    return None if hit.empty else hit.iloc[0].to_dict()


@dataclass(frozen=True)
class Inconsistency:
    """A printed gap that differs from (error - baseline error) of the same printed table."""
    dataset: str
    arch: str
    method: str
    metric: str          # top1_gap | top5_gap
    printed: float
    recomputed: float    # error column - baseline's error column, rounded to 2 decimals
    error: float
    baseline_error: float

    def describe(self) -> str:
        err = self.metric.replace("_gap", "")
        return (f"{model_name(self.arch)} {self.method}: printed {err} gap {self.printed:.2f}, but its "
                f"error columns give {self.error:.2f} - {self.baseline_error:.2f} = {self.recomputed:.2f}; "
                f"the printed value is kept")

    def as_dict(self) -> dict:
        return asdict(self)


def inconsistencies(df: pd.DataFrame, dataset: str | None = None) -> list[Inconsistency]:
    """Every printed gap that disagrees (beyond rounding) with its own error columns."""
    found = []
    sel = df if dataset is None else rows(df, dataset)
    for (ds, arch), group in sel.groupby(["dataset_key", "arch"], sort=False):
        base = group[group["method"] == BASELINE]
        if base.empty:
            continue
        base = base.iloc[0]
        for _, row in group[group["method"] != BASELINE].iterrows():
            for metric in ("top1_gap", "top5_gap"):
                err_col = metric.replace("gap", "err")
                printed, err, base_err = row[metric], row[err_col], base[err_col]
                if pd.isna(printed) or pd.isna(err) or pd.isna(base_err):
                    continue
                recomputed = round(float(err) - float(base_err), 2)
                if abs(float(printed) - recomputed) > ROUNDING:
                    found.append(Inconsistency(ds, arch, row["method"], metric, float(printed),
                                               recomputed, float(err), float(base_err)))
    return found
