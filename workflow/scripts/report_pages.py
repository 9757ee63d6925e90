"""Rule report_pages: a dataset's tables as HTML pages for the report (manidp.report.html)."""
import html
from pathlib import Path

from manidp.report import published as pub
from manidp.report.aggregate import read_csv
from manidp.report.html import csv_to_html, markdown_to_html, page
from manidp.report.step import run

sm = snakemake  # noqa: F821 (set by Snakemake)


def main():
    name = pub.DATASET_NAMES[sm.wildcards.dataset]
    number = pub.TABLE_NUMBERS[sm.wildcards.dataset]
    tex = Path(sm.input.table_tex).read_text()
    bodies = {
        "table": markdown_to_html(Path(sm.input.table_md).read_text())
        + f"<h3>LaTeX ({Path(sm.input.table_tex).name}, needs booktabs)</h3>\n<pre>{html.escape(tex)}</pre>",
        "comparison": markdown_to_html(Path(sm.input.comparison).read_text()),
        "methods": markdown_to_html(Path(sm.input.methods).read_text()),
        "summary": f"<p class=\"caption\"><b>{name}: summary over seeds</b> ({Path(sm.input.summary).name})</p>\n"
        + csv_to_html(read_csv(sm.input.summary, "summary")),
        "runs": f"<p class=\"caption\"><b>{name}: every evaluated model</b> ({Path(sm.input.runs).name})</p>\n"
        + csv_to_html(read_csv(sm.input.runs, "runs")),
    }
    titles = {"table": f"Table {number} ({name})", "comparison": f"{name}: regenerated vs published",
              "methods": f"{name}: methods side by side", "summary": f"{name}: summary", "runs": f"{name}: runs"}
    for key, body in bodies.items():
        Path(sm.output[key]).write_text(page(titles[key], body))


run(main, sm.log[0])
