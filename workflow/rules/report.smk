# The report (`snakemake --report report.html`, after the DAG is built): every table as an HTML page
# that the report shows in place (manidp.report.html; .md, .tex and .csv items only download), the
# plots, and the landing page's run summary (workflow/report/workflow.rst includes summary.rst).


rule report_pages:
    """The tables of a dataset as HTML pages for the report."""
    input:
        table_md=f"{TABLES}/{{dataset}}.md",
        table_tex=f"{TABLES}/{{dataset}}.tex",
        comparison=f"{RESULTS}/{{dataset}}/comparison.md",
        methods=f"{RESULTS}/{{dataset}}/methods.md",
        summary=f"{RESULTS}/{{dataset}}/summary.csv",
        runs=f"{RESULTS}/{{dataset}}/runs.csv",
    output:
        **{page: report(f"{RESULTS}/{{dataset}}/report/{page}.html", caption=f"../report/{rst}",
                        category="Tables", subcategory=lambda wc: pub.DATASET_NAMES[wc.dataset],
                        labels=_page_labels(page))
           for page, (_, rst) in REPORT_PAGES.items()},
    log:
        f"{RESULTS}/logs/report_pages_{{dataset}}.log",
    script:
        "../scripts/report_pages.py"


rule report_summary:
    """The landing page's summary: smoke or full, and per table how many numbers are within tolerance."""
    input:
        comparisons=expand(f"{RESULTS}/{{dataset}}/comparison.csv", dataset=DATASETS),
    output:
        f"{RESULTS}/report/summary.rst",
    params:
        datasets=DATASETS,
        label=LABEL,
        smoke=SMOKE,
    log:
        f"{RESULTS}/logs/report_summary.log",
    script:
        "../scripts/report_summary.py"
