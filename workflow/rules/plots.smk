# Figures of a dataset, PNG and PDF: top-1 vs MACs, per-instance MAC histograms, keep rates, and
# every method's top-1 vs MACs curve with seed spread and its published point (methods).


PLOT_NAMES = {"top1_vs_macs": "top-1 vs MACs, published and ours", "macs_histogram": "per-instance MACs",
              "keep_rates": "per-layer keep rates", "methods": "methods, top-1 vs MACs",
              "budget": "top-1 against pruning budget"}


rule plots:
    input:
        summary=f"{RESULTS}/{{dataset}}/summary.csv",
        runs=f"{RESULTS}/{{dataset}}/runs.csv",
        evals=eval_files,
        published=config["published"],
    output:
        **{f"{p}_{ext}": (report(f"{RESULTS}/{{dataset}}/plots/{p}.{ext}", caption=f"../report/{p}.rst",
                                 category="Plots", subcategory=lambda wc: pub.DATASET_NAMES[wc.dataset],
                                 labels=lambda wc, p=p: {"dataset": pub.DATASET_NAMES[wc.dataset],
                                                         "plot": PLOT_NAMES[p]})
                          if ext == "png" else f"{RESULTS}/{{dataset}}/plots/{p}.{ext}")
           for p in PLOTS for ext in ("png", "pdf")},
    params:
        label=LABEL,
        smoke=SMOKE,
    log:
        f"{RESULTS}/logs/plots_{{dataset}}.log",
    script:
        "../scripts/plots.py"
