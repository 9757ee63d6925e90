# Measurement of every final model (top-1/top-5, per-instance MAC statistics, keep rates), then
# the runs of a dataset gathered into runs.csv and summary.csv (mean, std, n over seeds).


rule measure:
    """`manidp evaluate` of a run's final checkpoint -> eval.json."""
    input:
        data=data_ready,
        done=lambda wc: done_marker(wc.dataset, wc.arch, wc.variant, wc.run),
    output:
        f"{RESULTS}/{{dataset}}/{{arch}}/{{variant}}/{{run}}/eval.json",
    params:
        data=lambda wc: data_path(wc.dataset),
        checkpoint=lambda wc, input: str(Path(input.done).parent / "checkpoint.pt"),
        options=evaluate_options,
    threads: config["threads"]["evaluate"]
    resources:
        **job_resources("measure"),
    log:
        f"{RESULTS}/{{dataset}}/{{arch}}/{{variant}}/{{run}}/evaluate.log",
    shell:
        "manidp evaluate --dataset {wildcards.dataset} --data {params.data:q} "
        "--checkpoint {params.checkpoint:q} --out {output:q} {params.options} --quiet 2>&1 | tee {log:q}"


rule aggregate:
    """Every eval.json of a dataset -> runs.csv (one row per model) and summary.csv."""
    input:
        eval_files,
    output:
        runs=f"{RESULTS}/{{dataset}}/runs.csv",
        summary=f"{RESULTS}/{{dataset}}/summary.csv",
    params:
        specs=lambda wc: run_specs(wc.dataset),
    log:
        f"{RESULTS}/logs/aggregate_{{dataset}}.log",
    script:
        "../scripts/aggregate.py"
