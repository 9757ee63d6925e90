"""Rule aggregate: eval.json files -> runs.csv and summary.csv (manidp.report.aggregate)."""
from manidp.report.aggregate import collect, summarize
from manidp.report.step import run

sm = snakemake  # noqa: F821 (set by Snakemake)


def main():
    runs = collect(sm.params.specs)
    runs.to_csv(sm.output.runs, index=False)
    summarize(runs).to_csv(sm.output.summary, index=False)


run(main, sm.log[0])
