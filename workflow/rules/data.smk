# Data: check each dataset once, before any training starts (a missing dataset fails here, with
# one line naming the config key to set). The check is a rule, not a parse-time test, so that
# `snakemake -n` prints the whole DAG on a machine without the data.


if config["data"]["imagenet"]["synthetic"]["enabled"]:

    rule synthetic_imagenet:
        """Smoke runs only: a tiny, clearly labelled synthetic ImageNet-style tree (train/, val/,
        SYNTHETIC.txt) at data.imagenet.path."""
        output:
            marker=f"{data_path('imagenet')}/SYNTHETIC.txt",
        params:
            root=data_path("imagenet"),
            options=config["data"]["imagenet"]["synthetic"],
        resources:
            **job_resources("synthetic_imagenet"),
        log:
            f"{RESULTS}/logs/synthetic_imagenet.log",
        script:
            "../scripts/synthetic_imagenet.py"


rule check_data:
    """Is data.{dataset}.path there and in the expected form? Writes what was found (data.json)."""
    input:
        synthetic_marker,
    output:
        f"{RESULTS}/{{dataset}}/data.json",
    params:
        path=lambda wc: data_path(wc.dataset),
        key=lambda wc: f"data.{wc.dataset}.path",
        download=lambda wc: config["data"][wc.dataset].get("download", False),
        cache_dir=lambda wc: config["data"][wc.dataset].get("cache_dir"),
    priority: 100
    log:
        f"{RESULTS}/logs/check_data_{{dataset}}.log",
    script:
        "../scripts/check_data.py"
