"""Rule compare: published vs ours -> comparison.csv and comparison.md (manidp.report.compare)."""
from pathlib import Path

from manidp.report import published
from manidp.report.aggregate import read_csv
from manidp.report.compare import Tolerance, compare, to_markdown
from manidp.report.step import run

sm = snakemake  # noqa: F821 (set by Snakemake)


def main():
    dataset = sm.wildcards.dataset
    summary = read_csv(sm.input.summary, "summary")
    tolerance = Tolerance(**sm.params.tolerance)
    table = compare(summary, published.load(sm.input.published), dataset, tolerance, sm.params.smoke)
    table.to_csv(sm.output.csv, index=False)
    sources = sorted({s for v in summary["data_source"] for s in v.split("; ") if s})
    Path(sm.output.md).write_text(to_markdown(table, dataset, sm.params.label, sm.params.smoke,
                                              tolerance, sources))


run(main, sm.log[0])
