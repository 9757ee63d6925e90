# Dense baselines: trained by `manidp train-baseline` (CIFAR; ImageNet when asked), or torchvision's
# ImageNet weights, sha256-verified and imported as a manidp checkpoint.


rule train_baseline:
    """Train a dense network. Declares only metrics.json (written last): checkpoint.pt survives an
    interruption and the rerun resumes from it."""
    input:
        data=data_ready,
    output:
        metrics=f"{RESULTS}/{{dataset}}/{{arch}}/baseline/seed{{seed}}/metrics.json",
    params:
        data=lambda wc: data_path(wc.dataset),
        out=lambda wc: run_dir(wc.dataset, wc.arch, "baseline", f"seed{wc.seed}"),
        options=baseline_options,
        launch=launcher,
    threads: config["threads"]["train"]
    resources:
        **job_resources("train_baseline"),
    log:
        f"{RESULTS}/{{dataset}}/{{arch}}/baseline/seed{{seed}}/train.log",
    shell:
        "{params.launch} train-baseline --dataset {wildcards.dataset} --data {params.data:q} --arch {wildcards.arch} "
        "--seed {wildcards.seed} --out {params.out:q} {params.options} --quiet 2>&1 | tee {log:q}"


rule import_torchvision:
    """torchvision's ResNet-18/34 ImageNet weights (configured file or torch hub cache), verified
    against the sha256 prefix in their file name, as a manidp checkpoint. Waits for the dataset check,
    so that a run with nothing configured stops with that one error, not one per missing file."""
    input:
        data=ancient(f"{RESULTS}/imagenet/data.json"),
    output:
        f"{RESULTS}/imagenet/{{arch}}/baseline/torchvision/checkpoint.pt",
    params:
        weights=lambda wc: config["imagenet_baseline"]["weights"].get(wc.arch),
        hub_dir=config["imagenet_baseline"]["hub_dir"],
        key=lambda wc: f"imagenet_baseline.weights.{wc.arch}",
    priority: 90
    resources:
        **job_resources("import_torchvision"),
    log:
        f"{RESULTS}/logs/import_torchvision_{{arch}}.log",
    script:
        "../scripts/import_torchvision.py"
