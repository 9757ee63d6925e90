# The report (`snakemake --report report.html`, after the DAG is built): every table as an HTML page
# that the report shows in place (manidp.report.html; .md, .tex and .csv items only download), the
# plots, and the landing page's run summary (workflow/report/workflow.rst includes summary.rst).

# (page, what it renders, caption, label): one HTML page per table of a dataset.
REPORT_PAGES = {
    "table": ("the paper's table with our rows", "table.rst"),
    "comparison": ("published vs ours, with tolerance status", "comparison.rst"),
    "methods": ("every method side by side", "methods.rst"),
    "summary": ("mean, std and n over seeds (summary.csv)", "summary.rst"),
    "runs": ("one row per evaluated model (runs.csv)", "runs.rst"),
}


def report_page(dataset, page):
    return f"{RESULTS}/{dataset}/report/{page}.html"


def report_targets():
    return [report_page(ds, p) for ds in DATASETS for p in REPORT_PAGES] + [f"{RESULTS}/report/summary.rst"]


def _page_labels(page):
    what, _ = REPORT_PAGES[page]
    return lambda wc: {"dataset": pub.DATASET_NAMES[wc.dataset],
                       "table": f"Table {pub.TABLE_NUMBERS[wc.dataset]}: {what}" if page == "table" else what}


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


def _refuse_an_unbuilt_report():
    """`snakemake --report` of a DAG whose outputs are (partly) missing: one line naming the first
    missing file and the command that builds it, instead of Snakemake's error about one report item.
    (With --report-after-run the report follows the run, so nothing is missing.)"""
    args = sys.argv[1:]
    if not any(a == "--report" or a.startswith("--report=") for a in args) or "--report-after-run" in args:
        return
    missing = [t for t in all_targets() if not Path(t).exists()]
    if not missing:
        return
    build, skip = [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
        elif a == "--report":
            skip = i + 1 < len(args) and args[i + 1].endswith((".html", ".zip"))
        elif not a.startswith("--report="):
            build.append(a)
    if not any(a in ("--cores", "-c", "--jobs", "-j", "--profile") or a.startswith(("--cores=", "--profile="))
               for a in build):
        build = ["--cores", "all"] + build
    sys.exit(f"manidp: error: the report needs the built DAG, and {missing[0]} is missing "
             f"({len(missing)} of {len(all_targets())} outputs); build it first: "
             f"snakemake {shlex.join(build)} (target all), then rerun the report")


_refuse_an_unbuilt_report()
