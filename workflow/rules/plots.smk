# Figures of a dataset, PNG and PDF: top-1 vs MACs, per-instance MAC histograms, keep rates, and
# every method's top-1 vs MACs curve with seed spread and its published point (methods).


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
