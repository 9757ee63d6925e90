"""Rule synthetic_imagenet: a tiny synthetic image-folder tree for smoke runs (manidp.data)."""
from manidp.data import make_synthetic_imagefolder
from manidp.report.step import run

sm = snakemake  # noqa: F821 (set by Snakemake)


def main():
    o = sm.params.options
    make_synthetic_imagefolder(sm.params.root, num_classes=o["classes"], per_class=o["per_class"],
                               size=o["size"], seed=o["seed"])


run(main, sm.log[0])
