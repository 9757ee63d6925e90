"""The experiment list: one pruning run of the paper per line (``config/experiments.tsv``).

Columns (tab-separated; ``#`` starts a comment line; empty cells take the default):

``dataset``           cifar10 | imagenet
``arch``              resnet20, resnet32, resnet56, resnet110 (cifar10); resnet18, resnet34 (imagenet)
``point``             operating point, part of the output path ``{method}-{point}`` (letters/digits)
``published``         the method's name in ``published.csv`` (ManiDP, ManiDP-A, ManiDP-B, FBS, FPGM...)
                      whose numbers this row regenerates and is compared with; empty (an ablation):
                      none, then ``target_reduction`` is required
``target_reduction``  target MAC reduction in %; empty: the published row's FLOPs reduction
``lambda_sparse``     lambda_1 of this row; empty: the config's ``manidp.<dataset>.lambda_sparse``
``lambda_sim``        lambda_2 of this row; empty: the config's ``manidp.<dataset>.lambda_sim``
``method``            a key of the config's ``methods`` (manidp, fbs, fpgm, an ablation...); empty: manidp
``seeds``             the seeds of this row, comma-separated (``0,1,2``); empty: the config's ``seeds``.
                      A study gives its headline rows more seeds than its sweep points.
``epochs``            this row's pruning budget in epochs; empty: the config's ``manidp.<dataset>.epochs``.
                      A study compares methods at several budgets (one point per budget).

Every problem is one line naming the file, the row and the column.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import ManidpError
from . import published as pub

# The architectures each dataset's table can hold. A torch-free mirror of manidp.models.ARCHS
# (so the DAG builds without importing torch); tests/test_pipeline.py keeps the two in step.
ARCHS = {"cifar10": ("resnet20", "resnet32", "resnet56", "resnet110"),
         "imagenet": ("resnet18", "resnet34")}
COLUMNS = ("dataset", "arch", "point", "published", "target_reduction", "lambda_sparse", "lambda_sim", "method",
           "seeds", "epochs")
REQUIRED = ("dataset", "arch", "point", "published")
DEFAULT_METHOD = "manidp"


@dataclass(frozen=True)
class Experiment:
    dataset: str
    arch: str
    point: str
    published: str                    # method name in published.csv
    target_reduction: float           # % of dense MACs to remove
    lambda_sparse: float | None = None
    lambda_sim: float | None = None
    method: str = DEFAULT_METHOD      # a key of the config's ``methods``
    seeds: tuple[int, ...] | None = None  # None: the config's seeds
    epochs: int | None = None         # None: the config's manidp.<dataset>.epochs

    @property
    def variant(self) -> str:
        return f"{self.method}-{self.point}"


def load(path: str | Path, published: pd.DataFrame, methods=None) -> list[Experiment]:
    """Read and check the experiment list against the known architectures and the published table
    (and, if given, the config's method names)."""
    path = Path(path)
    if not path.is_file():
        raise ManidpError(f"{path}: experiment list not found (config key: experiments)")
    _check_header(path)
    try:
        df = pd.read_csv(path, sep="\t", comment="#", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ManidpError(f"{path}: not a readable TSV ({type(e).__name__}): one experiment per line, "
                          f"tab-separated columns {', '.join(COLUMNS)}") from None
    unknown = [c for c in df.columns if c not in COLUMNS]
    if unknown:
        raise ManidpError(f"{path}: unknown column {unknown[0]!r}; the columns are {', '.join(COLUMNS)}")
    for c in REQUIRED:
        if c not in df.columns:
            raise ManidpError(f"{path}: column {c!r} is missing; the columns are {', '.join(COLUMNS)}")
    out, seen = [], set()
    for i, row in enumerate(df.to_dict("records")):
        where = f"{path} row {i + 1}"
        row = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
        ds, arch, point, method = row["dataset"], row["arch"], row["point"], row["published"]
        if ds not in ARCHS:
            raise ManidpError(f"{where}: unknown dataset {ds!r} (column dataset); choose one of {', '.join(ARCHS)}")
        if arch not in ARCHS[ds]:
            every = [a for archs in ARCHS.values() for a in archs]
            hint = (f"{arch} is an architecture for {next(d for d in ARCHS if arch in ARCHS[d])}, not {ds}"
                    if arch in every else f"unknown architecture {arch!r}")
            raise ManidpError(f"{where}: {hint} (column arch); choose one of {', '.join(ARCHS[ds])}")
        name = row.get("method") or DEFAULT_METHOD
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ManidpError(f"{where}: method {name!r} must be lower-case letters, digits and _ (column method)")
        if methods is not None and name not in methods:
            raise ManidpError(f"{where}: unknown method {name!r} (column method); choose one of "
                              f"{', '.join(methods)} (config key methods)")
        if not re.fullmatch(r"[A-Za-z0-9]+", point or ""):
            raise ManidpError(f"{where}: point {point!r} must be letters and digits (it names the folder {name}-<point>)")
        if (ds, arch, name, point) in seen:
            raise ManidpError(f"{where}: {ds} {arch} {name} point {point} is listed twice")
        seen.add((ds, arch, name, point))
        ref = pub.lookup(published, ds, arch, method) if method else None
        target = _number(row.get("target_reduction", ""), where, "target_reduction")
        if target is None:
            if ref is None or pd.isna(ref["flops_reduction_pct"]):
                raise ManidpError(f"{where}: no published row {pub.model_name(arch)} {method!r} on "
                                  f"{pub.DATASET_NAMES[ds]} (column published) to take the target from; "
                                  f"fix the name or give target_reduction")
            target = float(ref["flops_reduction_pct"])
        if not 0 < target < 100:
            raise ManidpError(f"{where}: target_reduction {target} must be in (0, 100)")
        out.append(Experiment(ds, arch, point, method, target,
                              _number(row.get("lambda_sparse", ""), where, "lambda_sparse"),
                              _number(row.get("lambda_sim", ""), where, "lambda_sim"), name,
                              _seeds(row.get("seeds", ""), where), _epochs(row.get("epochs", ""), where)))
    if not out:
        raise ManidpError(f"{path}: lists no experiment")
    return out


def _check_header(path: Path) -> None:
    """A row with more cells than the header: pandas would take the first column as the index and
    shift every other one (a missing ``arch`` header showed as "unknown dataset 'resnet32'")."""
    try:
        lines = [ln.split("#", 1)[0].rstrip("\r\n") for ln in path.read_text().splitlines()]
    except UnicodeDecodeError:
        return                        # read_csv reports it
    rows = [ln.split("\t") for ln in lines if ln.strip()]
    if not rows:
        return
    header = [c.strip() for c in rows[0]]
    for i, row in enumerate(rows[1:]):
        if len(row) > len(header):
            missing = [c for c in COLUMNS[:len(row)] if c not in header]
            if not any(c.strip() for c in row[len(header):]):
                what = "remove the tabs at its end, or add the missing column to the header"
            elif missing:
                what = f"column {missing[0]!r} is missing from the header"
            else:
                what = "the header lacks a column"
            raise ManidpError(f"{path}: row {i + 1} has {len(row)} cells but the header only {len(header)}: "
                              f"{what}; the columns are {', '.join(COLUMNS)}")


def _epochs(text, where: str) -> int | None:
    if text is None or text == "":
        return None
    if not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        raise ManidpError(f"{where}: epochs {text!r} must be a whole number of epochs >= 1 (column epochs)")
    return int(text)


def _seeds(text, where: str) -> tuple[int, ...] | None:
    if text is None or text == "":
        return None
    words = [w.strip() for w in text.split(",")]
    if not all(re.fullmatch(r"[0-9]+", w) for w in words):
        raise ManidpError(f"{where}: seeds {text!r} must be non-negative integers separated by commas (e.g. 0,1,2)")
    seeds = tuple(int(w) for w in words)
    if len(set(seeds)) != len(seeds):
        raise ManidpError(f"{where}: seeds {text!r} lists a seed twice")
    return seeds


def _number(text, where: str, column: str) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ManidpError(f"{where}: {column} {text!r} is not a number") from None
    if not value >= 0:
        raise ManidpError(f"{where}: {column} {text!r} must be >= 0")
    return value
