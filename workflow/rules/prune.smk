# A pruning method (config methods.{method}: ManiDP, FBS, FPGM or an ablation) from the dense baseline
# of the same seed, at the target MAC reduction of the row; run folder {method}-{point}.


rule prune:
    """`manidp prune` for one experiment row and seed. Declares only metrics.json (written last),
    so an interrupted run resumes from its checkpoint.pt."""
    input:
        data=data_ready,
        baseline=baseline_done,
    output:
        metrics=f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}-{{point}}/seed{{seed}}/metrics.json",
    params:
        data=lambda wc: data_path(wc.dataset),
        out=lambda wc: run_dir(wc.dataset, wc.arch, f"{wc.method}-{wc.point}", f"seed{wc.seed}"),
        method=method_name,
        baseline=lambda wc, input: str(Path(input.baseline).parent / "checkpoint.pt"),
        options=manidp_options,
        launch=launcher,
    threads: config["threads"]["train"]
    resources:
        **job_resources("prune"),
    log:
        f"{RESULTS}/{{dataset}}/{{arch}}/{{method}}-{{point}}/seed{{seed}}/train.log",
    shell:
        "{params.launch} prune --method {params.method} --dataset {wildcards.dataset} --data {params.data:q} --arch {wildcards.arch} "
        "--seed {wildcards.seed} --out {params.out:q} --baseline {params.baseline:q} {params.options} "
        "--quiet 2>&1 | tee {log:q}"
