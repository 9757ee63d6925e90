"""Rule method_table: runs.csv -> methods.csv and methods.md (manidp.report.study)."""
from pathlib import Path

from manidp.report import published, study
from manidp.report.aggregate import read_csv
from manidp.report.step import run

sm = snakemake  # noqa: F821 (set by Snakemake)


def main():
    runs = read_csv(sm.input.runs, "runs")
    runs = runs[runs["dataset"] == sm.wildcards.dataset]
    table = study.method_table(runs)
    table.to_csv(sm.output.csv, index=False)
    sources = "; ".join(sorted({s for v in runs["data_source"] for s in v.split("; ") if s}))
    title = f"{published.DATASET_NAMES[sm.wildcards.dataset]}: methods side by side"
    Path(sm.output.md).write_text(study.method_table_md(table, title, sm.params.label, sm.params.smoke, sources))


run(main, sm.log[0])
