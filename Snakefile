# manidp: the paper's tables regenerated from scratch, one rule per step.
#
#   snakemake --cores 8 paper_tables/cifar10.tex       # Table 4 (CIFAR-10 ResNet-20/32/56)
#   snakemake --cores 8 paper_tables/imagenet.tex      # Table 1 (ImageNet ResNet-18/34, ManiDP-A/B)
#   snakemake --cores 8                                # both, with comparisons and plots
#   snakemake --cores 2 --configfile config/smoke.yaml # the smoke run (results/smoke/...)
#   snakemake --report report.html                     # after a run: tables, comparisons and plots in one page
#   snakemake --report report.html --configfile config/smoke.yaml     # the same for the smoke run
#
# Data flow (docs/pipeline.md): check_data -> train_baseline | import_torchvision -> prune ->
# measure -> aggregate -> compare, table, plots.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/baseline.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


localrules:
    all,
    check_data,
    aggregate,
    compare,
    table,
    method_table,
    plots,
    report_pages,
    report_summary,


rule all:
    """The tables, comparisons and plots of every dataset of the experiment list."""
    input:
        all_targets(),
