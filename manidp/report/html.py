"""The tables as HTML pages for ``snakemake --report`` (rule ``report_pages``), and the run summary
of the report's landing page.

A report shows an HTML item in the page itself, whereas ``.md``, ``.tex`` and ``.csv`` items only
download. The Markdown tables (paper tables, comparison, methods) are converted here, from the
subset of Markdown the workflow writes (headings, bold/italic/code, pipe tables, bullet lists,
paragraphs); the CSVs through pandas. No number is formatted anew from the Markdown: the cells are
the Markdown's own text.
"""
from __future__ import annotations

import html
import re

import pandas as pd

STYLE = """
body { font-family: sans-serif; font-size: 13px; margin: 12px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 14px; }
th, td { border: 1px solid #bbb; padding: 2px 7px; }
th { background: #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.csv td { white-space: nowrap; }
tr.ours td { background: #eef6ee; }
pre { background: #f6f6f6; padding: 8px; font-size: 11px; overflow-x: auto; }
p.caption { font-size: 15px; }
"""


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def _inline(text: str) -> str:
    """Escape, then **bold**, *italic* and `code` (the only inline Markdown the workflow writes)."""
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"<i>\1</i>", text)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(lines: list[str]) -> str:
    head, align, body = _cells(lines[0]), _cells(lines[1]), [_cells(x) for x in lines[2:]]
    right = [a.endswith(":") and not a.startswith(":") for a in align]
    out = ["<table>", "<tr>" + "".join(f"<th>{_inline(h)}</th>" for h in head) + "</tr>"]
    for row in body:
        ours = any("(ours" in c for c in row)
        tds = "".join(f"<td class=\"num\">{_inline(c)}</td>" if r else f"<td>{_inline(c)}</td>"
                      for c, r in zip(row, right + [False] * len(row)))
        out.append(("<tr class=\"ours\">" if ours else "<tr>") + tds + "</tr>")
    return "\n".join(out + ["</table>"])


def markdown_to_html(md: str) -> str:
    """The workflow's Markdown (tables, notes) as an HTML fragment."""
    md = re.sub(r"<!--.*?-->", "", md, flags=re.S)
    blocks, out = re.split(r"\n\s*\n", md.strip()), []
    for block in blocks:
        lines = [x for x in block.splitlines() if x.strip()]
        if not lines:
            continue
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1]):
                j = i + 2
                while j < len(lines) and lines[j].startswith("|"):
                    j += 1
                out.append(_table(lines[i:j]))
                i = j
            elif line.startswith("- "):
                j = i
                while j < len(lines) and lines[j].startswith("- "):
                    j += 1
                out.append("<ul>" + "".join(f"<li>{_inline(x[2:])}</li>" for x in lines[i:j]) + "</ul>")
                i = j
            elif m := re.match(r"^(#{1,4}) (.*)", line):
                level = len(m.group(1)) + 1
                out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
                i += 1
            else:
                j = i
                while j < len(lines) and not lines[j].startswith(("|", "- ", "#")):
                    j += 1
                out.append("<p>" + _inline(" ".join(lines[i:j])) + "</p>")
                i = max(j, i + 1)
    return "\n".join(out)


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return "" if value is None else str(value)


def csv_to_html(df: pd.DataFrame) -> str:
    """A CSV of the workflow as an HTML table: one row per row, numbers to 4 significant digits
    (the CSV itself keeps full precision), empty cells for NaN."""
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    out = ["<table class=\"csv\">", "<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns) + "</tr>"]
    for row in df.itertuples(index=False):
        out.append("<tr>" + "".join(f"<td class=\"num\">{html.escape(_fmt(v))}</td>" if num
                                    else f"<td>{html.escape(_fmt(v))}</td>" for v, num in zip(row, numeric))
                   + "</tr>")
    return "\n".join(out + ["</table>"])


STATUSES = ("within tolerance", "better", "worse", "not comparable")


def status_counts(comparison: pd.DataFrame) -> dict[str, int]:
    """How many regenerated numbers of a comparison.csv have each status."""
    ours = comparison[comparison["kind"] == "regenerated"]
    return {s: int((ours["status"] == s).sum()) for s in STATUSES}


def _rst_table(header: list[str], rows: list[list[str]]) -> str:
    """An RST grid table (the landing page is reStructuredText)."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [rule, line(header), rule.replace("-", "=")]
    for r in rows:
        out += [line(r), rule]
    return "\n".join(out)


def run_summary_rst(comparisons: dict[str, pd.DataFrame], tables: dict[str, str], label: str, smoke: bool) -> str:
    """The landing page's summary: smoke or full, and per dataset its table and how many of its
    regenerated numbers are within tolerance, better, worse or not comparable."""
    kind = (f"**Short-budget run** (configuration ``{label}``, ``smoke: true``): a check of the pipeline, "
            f"not a reproduction; every status is *not comparable* by rule." if smoke else
            f"**Full run** (configuration ``{label}``): the regenerated numbers are compared with the "
            f"published ones under the tolerance rules (docs/pipeline.md, \"Comparison rules\").")
    rows = []
    for dataset, df in comparisons.items():
        counts = status_counts(df)
        ours = df[df["kind"] == "regenerated"]
        models = ours.drop_duplicates(["arch", "variant"]).shape[0]
        rows.append([tables[dataset], str(models), str(len(ours))] + [str(counts[s]) for s in STATUSES])
    header = ["table", "models", "numbers compared", *STATUSES]
    return kind + "\n\n" + _rst_table(header, rows) + "\n"
