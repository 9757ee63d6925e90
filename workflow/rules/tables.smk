# The paper's tables with our rows beside the published ManiDP rows, and the comparison
# published vs ours with a tolerance status for every regenerated number.


rule compare:
    input:
        summary=f"{RESULTS}/{{dataset}}/summary.csv",
        published=config["published"],
    output:
        csv=f"{RESULTS}/{{dataset}}/comparison.csv",
        md=f"{RESULTS}/{{dataset}}/comparison.md",
    params:
        label=LABEL,
        smoke=SMOKE,
        tolerance=config["tolerance"],
    log:
        f"{RESULTS}/logs/compare_{{dataset}}.log",
    script:
        "../scripts/compare.py"


rule table:
    """Table 4 (cifar10) or Table 1 (imagenet), LaTeX and Markdown, from the jinja2 templates."""
    input:
        summary=f"{RESULTS}/{{dataset}}/summary.csv",
        published=config["published"],
        templates=lambda wc: [f"{config['templates']}/base.tex.j2", f"{config['templates']}/{wc.dataset}.tex.j2",
                              f"{config['templates']}/base.md.j2", f"{config['templates']}/{wc.dataset}.md.j2"],
    output:
        tex=f"{TABLES}/{{dataset}}.tex",
        md=f"{TABLES}/{{dataset}}.md",
    params:
        templates=config["templates"],
        label=LABEL,
        smoke=SMOKE,
    log:
        f"{RESULTS}/logs/table_{{dataset}}.log",
    script:
        "../scripts/table.py"


rule method_table:
    """Every method and operating point of a dataset side by side (mean, std and best of n seeds,
    change against the own baseline, MACs): methods.csv and methods.md (manidp.report.study)."""
    input:
        runs=f"{RESULTS}/{{dataset}}/runs.csv",
    output:
        csv=f"{RESULTS}/{{dataset}}/methods.csv",
        md=f"{RESULTS}/{{dataset}}/methods.md",
    params:
        label=LABEL,
        smoke=SMOKE,
    log:
        f"{RESULTS}/logs/method_table_{{dataset}}.log",
    script:
        "../scripts/method_table.py"
