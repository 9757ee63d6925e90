"""What the Snakemake workflow computes after training: the published numbers, the per-run
measurements gathered into summaries, the comparison against the paper, its tables and plots.

Modules (none imports torch, so the workflow's DAG builds fast):

* :mod:`~manidp.report.published`   the paper's Table 1 and Table 4 (``paper_tables/published.csv``)
  and the check of every printed gap against its own error columns;
* :mod:`~manidp.report.experiments` the experiment list (``config/experiments.tsv``), checked;
* :mod:`~manidp.report.datacheck`   "is the dataset there?", naming the config key when it is not;
* :mod:`~manidp.report.aggregate`   eval JSONs -> ``runs.csv`` and ``summary.csv`` (mean, std, n);
* :mod:`~manidp.report.compare`     published vs ours -> ``comparison.csv`` and ``comparison.md``;
* :mod:`~manidp.report.tables`      the paper's tables, LaTeX and Markdown, from jinja2 templates;
* :mod:`~manidp.report.plots`       top-1 vs MACs, per-instance MAC histograms, per-layer keep rates.
"""
