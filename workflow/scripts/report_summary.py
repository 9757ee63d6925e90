"""Rule report_summary: the report's landing-page summary (manidp.report.html.run_summary_rst)."""
from pathlib import Path

import pandas as pd

from manidp.report import published as pub
from manidp.report.html import run_summary_rst
from manidp.report.step import run

sm = snakemake  # noqa: F821 (set by Snakemake)


def main():
    comparisons = {ds: pd.read_csv(path) for ds, path in zip(sm.params.datasets, sm.input.comparisons)}
    tables = {ds: f"Table {pub.TABLE_NUMBERS[ds]} ({pub.DATASET_NAMES[ds]})" for ds in sm.params.datasets}
    Path(sm.output[0]).write_text(run_summary_rst(comparisons, tables, sm.params.label, sm.params.smoke))


run(main, sm.log[0])
