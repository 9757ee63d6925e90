"""The paper's tables (Table 1: ImageNet, Table 4: CIFAR-10), regenerated, in LaTeX and Markdown.

:func:`table_context` puts the published rows of every method in the printed order and, right
after the published Baseline and ManiDP rows, our regenerated rows (marked "ours, regenerated" and
a dagger, with n seeds). Printed gaps that disagree with their error columns keep their printed
value and get a double dagger with the recomputed value in a footnote. The templates in
``paper_tables/templates/`` lay the context out; they hold no number.
"""
from __future__ import annotations

import math
from pathlib import Path

import jinja2
import pandas as pd

from . import published as pub

CELLS = ("top1_err", "top5_err", "top1_gap", "top5_gap", "flops")
OURS_COLUMN = {"top1_err": "top1_err", "top5_err": "top5_err", "top1_gap": "top1_gap",
               "top5_gap": "top5_gap", "flops": "reduction_pct"}
PUBLISHED_COLUMN = {"top1_err": "top1_err", "top5_err": "top5_err", "top1_gap": "top1_gap",
                    "top5_gap": "top5_gap", "flops": "flops_reduction_pct"}
DIGITS = {"top1_err": 2, "top5_err": 2, "top1_gap": 2, "top5_gap": 2, "flops": 1}
OURS_LABEL = "ours, regenerated"


def _num(x) -> float | None:
    return None if x is None or pd.isna(x) else float(x)


def _cell(key: str, mean, std=None, n=None, flag: str = "") -> dict:
    return {"mean": _num(mean), "std": _num(std), "n": n, "digits": DIGITS[key], "flag": flag}


def table_context(dataset: str, published: pd.DataFrame, summary: pd.DataFrame | None,
                  label: str = "", smoke: bool = False) -> dict:
    """Everything a template needs for one dataset's table."""
    flags = {(i.arch, i.method, i.metric): i for i in pub.inconsistencies(published, dataset)}
    ours = summary[summary["dataset"] == dataset] if summary is not None else None
    if ours is None or ours.empty:
        ours = pd.DataFrame(columns=["arch", "published", "variant", "n", "data_source"])
    groups, gate_notes, seeds = [], [], set()
    for arch, rows in pub.rows(published, dataset).groupby("arch", sort=False):
        out = []
        for _, r in rows.iterrows():
            cells = {}
            for key in CELLS:
                flag = "ddagger" if (arch, r["method"], key) in flags else ""
                cells[key] = _cell(key, r[PUBLISHED_COLUMN[key]], flag=flag)
            out.append({"method": r["method"], "ref": str(r["ref"]), "dynamic": r["dynamic"],
                        "ours": False, "n": None, "cells": cells})
            for _, s in ours[(ours["arch"] == arch) & (ours["published"] == r["method"])].iterrows():
                n = int(s["n"])
                seeds.add(n)
                cells = {key: _cell(key, s[f"{OURS_COLUMN[key]}_mean"], s[f"{OURS_COLUMN[key]}_std"], n)
                         for key in CELLS}
                out.append({"method": f"{r['method']} ({OURS_LABEL})", "ref": "", "dynamic": r["dynamic"],
                            "ours": True, "n": n, "cells": cells})
                if s["variant"] != "baseline" and _num(s.get("gate_macs")) is not None:
                    gate_notes.append({"model": pub.model_name(arch), "method": r["method"],
                                       "gate_mmacs": float(s["gate_macs"]) / 1e6,
                                       "gate_pct": float(s["gate_macs"]) / float(s["dense_macs"]) * 100})
        groups.append({"model": pub.model_name(arch), "rows": out})
    sources = sorted({part for v in ours["data_source"] for part in str(v).split("; ") if part})
    return {
        "dataset": dataset, "dataset_name": pub.DATASET_NAMES[dataset],
        "table_number": pub.TABLE_NUMBERS[dataset], "label": label, "smoke": smoke,
        "groups": groups, "has_ours": bool(seeds), "seeds": sorted(seeds),
        "inconsistencies": [{"model": pub.model_name(i.arch), "method": i.method,
                             "metric": "top-1" if i.metric == "top1_gap" else "top-5", "printed": i.printed,
                             "error": i.error, "baseline_error": i.baseline_error, "recomputed": i.recomputed}
                            for i in flags.values()],
        "gate_notes": gate_notes, "data_sources": sources,
    }


# ---------------------------------------------------------------------------- formatting filters

def _fmt(x: float, digits: int) -> str:
    return f"{x:.{digits}f}"


def tex_cell(cell: dict) -> str:
    if cell["mean"] is None:
        return "--"
    text = _fmt(cell["mean"], cell["digits"])
    if cell["std"] is not None and not math.isnan(cell["std"]):
        text += r"$\pm$" + _fmt(cell["std"], cell["digits"])
    if cell["flag"]:
        text += rf"$^\{cell['flag']}$"
    return text


def md_cell(cell: dict) -> str:
    if cell["mean"] is None:
        return "-"
    text = _fmt(cell["mean"], cell["digits"])
    if cell["std"] is not None and not math.isnan(cell["std"]):
        text += " ± " + _fmt(cell["std"], cell["digits"])
    if cell["flag"]:
        text += " ‡"
    return text


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def tex_escape(text) -> str:
    return "".join(_TEX_SPECIAL.get(c, c) for c in str(text))


def environment(template_dir: str | Path, kind: str) -> jinja2.Environment:
    """A jinja2 environment for ``kind`` "tex" (LaTeX-safe delimiters) or "md"."""
    loader = jinja2.FileSystemLoader(str(template_dir))
    if kind == "tex":
        env = jinja2.Environment(loader=loader, block_start_string=r"\BLOCK{", block_end_string="}",
                                 variable_start_string=r"\VAR{", variable_end_string="}",
                                 comment_start_string=r"\#{", comment_end_string="}",
                                 trim_blocks=True, lstrip_blocks=True, autoescape=False,
                                 undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    else:
        env = jinja2.Environment(loader=loader, trim_blocks=True, lstrip_blocks=True, autoescape=False,
                                 undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters.update(tex=tex_cell, md=md_cell, esc=tex_escape, num=_fmt)
    return env


def render(template_dir: str | Path, dataset: str, kind: str, context: dict) -> str:
    """Render ``{dataset}.{kind}.j2`` with ``context``."""
    return environment(template_dir, kind).get_template(f"{dataset}.{kind}.j2").render(**context)
