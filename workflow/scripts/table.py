"""Rule table: the paper's table of a dataset, LaTeX and Markdown (manidp.report.tables)."""
from pathlib import Path

from manidp.report import published
from manidp.report.aggregate import read_csv
from manidp.report.tables import render, table_context
from manidp.report.step import run

sm = snakemake  # noqa: F821 (set by Snakemake)


def main():
    dataset = sm.wildcards.dataset
    context = table_context(dataset, published.load(sm.input.published), read_csv(sm.input.summary, "summary"),
                            label=sm.params.label, smoke=sm.params.smoke)
    Path(sm.output.tex).write_text(render(sm.params.templates, dataset, "tex", context))
    Path(sm.output.md).write_text(render(sm.params.templates, dataset, "md", context))


run(main, sm.log[0])
