# ManiDP from the dense baseline of the same seed, at the target MAC reduction of the row.


def baseline_done(wildcards):
    run = baseline_run(wildcards.dataset, wildcards.seed)
    return done_marker(wildcards.dataset, wildcards.arch, "baseline", run)


rule prune:
    """`manidp prune` for one experiment row and seed. Declares only metrics.json (written last),
    so an interrupted run resumes from its checkpoint.pt."""
    input:
        data=data_ready,
        baseline=baseline_done,
    output:
        metrics=f"{RESULTS}/{{dataset}}/{{arch}}/manidp-{{point}}/seed{{seed}}/metrics.json",
    params:
        data=lambda wc: data_path(wc.dataset),
        out=lambda wc: run_dir(wc.dataset, wc.arch, f"manidp-{wc.point}", f"seed{wc.seed}"),
        baseline=lambda wc, input: str(Path(input.baseline).parent / "checkpoint.pt"),
        options=manidp_options,
    threads: config["threads"]["train"]
    log:
        f"{RESULTS}/{{dataset}}/{{arch}}/manidp-{{point}}/seed{{seed}}/train.log",
    shell:
        "manidp prune --dataset {wildcards.dataset} --data {params.data:q} --arch {wildcards.arch} "
        "--seed {wildcards.seed} --out {params.out:q} --baseline {params.baseline:q} {params.options} "
        "--quiet 2>&1 | tee {log:q}"
