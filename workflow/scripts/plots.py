"""Rule plots: top-1 vs MACs, per-instance MAC histograms, keep rates (manidp.report.plots)."""
from pathlib import Path

from manidp.report import plots, published, study
from manidp.report.aggregate import read_csv, read_eval
from manidp.report.step import run

sm = snakemake  # noqa: F821 (set by Snakemake)


def main():
    dataset, label, smoke = sm.wildcards.dataset, sm.params.label, sm.params.smoke
    summary = read_csv(sm.input.summary, "summary")
    runs = read_csv(sm.input.runs, "runs")
    pruned = [(r, read_eval(r["eval_json"])) for r in runs.to_dict("records") if r["variant"] != "baseline"]
    figures = {
        "top1_vs_macs": plots.top1_vs_macs(summary, published.load(sm.input.published), dataset, label, smoke),
        "macs_histogram": plots.macs_histogram(pruned, dataset, label, smoke),
        "keep_rates": plots.keep_rates(pruned, dataset, label, smoke),
        "methods": study.method_curves(runs, published.load(sm.input.published), dataset, label, smoke),
        "budget": study.budget_curves(runs, dataset, label, smoke),
    }
    for name, fig in figures.items():
        plots.save(fig, Path(sm.output[f"{name}_png"]).with_suffix(""))


run(main, sm.log[0])
