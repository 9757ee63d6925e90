"""manidp.report: published numbers, experiment list, data check, aggregation, comparison, tables."""
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from manidp.errors import ManidpError
from manidp.report import aggregate, compare, datacheck, experiments, published, study, tables

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "paper_tables" / "published.csv"
TEMPLATES = ROOT / "paper_tables" / "templates"


@pytest.fixture(scope="module")
def pub():
    return published.load(PUBLISHED)


def test_published_copy_matches_the_reference(pub):
    ref = ROOT.parent / "shared" / "reference" / "published-tables.csv"
    if ref.is_file():
        assert PUBLISHED.read_text() == ref.read_text()
    assert len(published.rows(pub, "imagenet")) == 21 and len(published.rows(pub, "cifar10")) == 23


def test_exactly_the_two_known_inconsistencies_are_flagged(pub):
    found = {(i.arch, i.method, i.metric): (i.printed, i.recomputed) for i in published.inconsistencies(pub)}
    assert found == {("resnet34", "FPGM", "top1_gap"): (0.07, 0.77), ("resnet34", "FBS", "top1_gap"): (1.85, 1.65)}


def test_experiment_targets_come_from_the_published_table(pub):
    rows = experiments.load(ROOT / "config" / "experiments.tsv", pub)
    got = {(x.dataset, x.arch, x.published): x.target_reduction for x in rows}
    assert got == {("cifar10", "resnet20", "ManiDP"): 54.2, ("cifar10", "resnet32", "ManiDP"): 63.2,
                   ("cifar10", "resnet56", "ManiDP"): 62.4, ("imagenet", "resnet18", "ManiDP-A"): 51.0,
                   ("imagenet", "resnet18", "ManiDP-B"): 55.1, ("imagenet", "resnet34", "ManiDP-A"): 46.8,
                   ("imagenet", "resnet34", "ManiDP-B"): 55.3,
                   # FBS and FPGM beside their published rows, at their own published reductions
                   ("cifar10", "resnet20", "FBS"): 53.1, ("cifar10", "resnet20", "FPGM"): 54.0,
                   ("cifar10", "resnet32", "FBS"): 55.7, ("cifar10", "resnet32", "FPGM"): 53.2,
                   ("cifar10", "resnet56", "FBS"): 53.6, ("cifar10", "resnet56", "FPGM"): 52.6,
                   ("imagenet", "resnet18", "FBS"): 49.5, ("imagenet", "resnet18", "FPGM"): 41.8,
                   ("imagenet", "resnet34", "FBS"): 51.2, ("imagenet", "resnet34", "FPGM"): 41.1}
    assert {x.method for x in rows if x.published in ("FBS", "FPGM")} == {"fbs", "fpgm"}
    assert all(x.seeds is None for x in rows)                       # the config's seeds


def test_seeds_column(tmp_path, pub):
    path = tmp_path / "x.tsv"
    path.write_text("dataset\tarch\tpoint\tpublished\tseeds\n"
                    "cifar10\tresnet20\tpaper\tManiDP\t0, 1,2\ncifar10\tresnet32\tpaper\tManiDP\t\n")
    rows = experiments.load(path, pub)
    assert [x.seeds for x in rows] == [(0, 1, 2), None]


def test_arch_lists_mirror_the_models():
    from manidp.models import ARCHS
    assert {a for archs in experiments.ARCHS.values() for a in archs} == set(ARCHS)
    for ds, archs in experiments.ARCHS.items():
        assert {ARCHS[a].family for a in archs} == {"cifar" if ds == "cifar10" else "imagenet"}


@pytest.mark.parametrize("line, message", [
    ("cifar10\tresnet99\tpaper\tManiDP", r"row 1: unknown architecture 'resnet99' \(column arch\)"),
    ("cifar10\tresnet18\tpaper\tManiDP", r"row 1: resnet18 is an architecture for imagenet, not cifar10"),
    ("mnist\tresnet20\tpaper\tManiDP", r"row 1: unknown dataset 'mnist'"),
    ("cifar10\tresnet20\tpaper\tManiDP-Z", r"row 1: no published row ResNet-20 'ManiDP-Z'"),
    ("cifar10\tresnet20\tpa-per\tManiDP", r"row 1: point 'pa-per' must be letters and digits"),
    ("cifar10\tresnet20\tpaper\tManiDP\t\t\t\tmanidp\t0;1", r"row 1: seeds '0;1' must be non-negative integers"),
    ("cifar10\tresnet20\tpaper\tManiDP\t\t\t\tmanidp\t1,1", r"row 1: seeds '1,1' lists a seed twice"),
])
def test_bad_experiment_rows_are_one_line(tmp_path, pub, line, message):
    path = tmp_path / "x.tsv"
    header = "\t".join(experiments.COLUMNS) if line.count("\t") > 3 else "dataset\tarch\tpoint\tpublished"
    path.write_text(header + "\n" + line + "\n")
    with pytest.raises(ManidpError, match=message) as e:
        experiments.load(path, pub)
    assert "\n" not in str(e.value)


def test_missing_datasets_name_the_config_key(tmp_path):
    with pytest.raises(ManidpError, match=r"^data\.cifar10\.path: .* does not exist; set data\.cifar10\.path"):
        datacheck.check_dataset("cifar10", str(tmp_path / "none"), "data.cifar10.path")
    with pytest.raises(ManidpError, match=r"^data\.imagenet\.path: .* is not a folder; set data\.imagenet\.path"):
        datacheck.check_dataset("imagenet", str(tmp_path / "none"), "data.imagenet.path")
    (tmp_path / "inet" / "train" / "n01").mkdir(parents=True)
    (tmp_path / "inet" / "train" / "n01" / "x.png").write_bytes(b"")
    with pytest.raises(ManidpError, match=r"^data\.imagenet\.path: .*val is missing"):
        datacheck.check_dataset("imagenet", str(tmp_path / "inet"), "data.imagenet.path")
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"not an archive")
    with pytest.raises(ManidpError, match=r"^data\.cifar10\.path: "):
        datacheck.check_dataset("cifar10", str(bad), "data.cifar10.path", cache_dir=str(tmp_path / "c"))


def _eval(top1, top5, reduction, dense=40e6, gate=1e4):
    return {"top1": top1, "top5": top5, "loss": 1.0, "instances": 10, "data_source": "test data",
            "macs": {"macs_mean": dense * (1 - reduction / 100), "macs_std": 0.0, "macs_min": 0.0,
                     "macs_max": dense, "dense_macs": dense, "gate_macs": gate, "reduction_pct": reduction,
                     "histogram": {"counts": [10], "edges": [0.0, dense]}, "keep_rates": {"g1": 0.5}}}


def _specs(tmp_path, results):
    specs = []
    for (variant, seed), result in results.items():
        path = tmp_path / f"{variant}-{seed}.json"
        path.write_text(json.dumps(result))
        specs.append(dict(dataset="cifar10", arch="resnet20", variant=variant,
                          point="" if variant == "baseline" else "paper",
                          published="Baseline" if variant == "baseline" else "ManiDP", run=f"seed{seed}",
                          seed=seed, baseline_run="" if variant == "baseline" else f"seed{seed}",
                          target_reduction=54.2, eval=str(path)))
    return specs


def test_aggregate_pairs_gaps_and_gives_mean_std_n(tmp_path):
    specs = _specs(tmp_path, {("baseline", 0): _eval(92.0, 99.0, 0.0), ("baseline", 1): _eval(92.4, 99.0, 0.0),
                              ("manidp-paper", 0): _eval(91.8, 99.0, 54.0), ("manidp-paper", 1): _eval(91.8, 99.0, 55.0)})
    runs = aggregate.collect(specs)
    summary = aggregate.summarize(runs).set_index("variant")
    m = summary.loc["manidp-paper"]
    assert m["n"] == 2 and m["top1_err_mean"] == pytest.approx(8.2)
    assert m["top1_gap_mean"] == pytest.approx((0.2 + 0.6) / 2)          # paired per seed
    assert m["reduction_pct_mean"] == pytest.approx(54.5) and m["reduction_pct_std"] == pytest.approx(0.7071, 1e-3)
    single = aggregate.summarize(runs[runs["run"] == "seed0"]).set_index("variant")
    assert math.isnan(single.loc["manidp-paper", "top1_err_std"])


def test_corrupt_eval_json_is_one_clear_line(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text('{"top1": 91.2, "top5"')   # truncated
    with pytest.raises(ManidpError, match=r"eval\.json: not valid JSON .* truncated or corrupt: delete it and rerun"):
        aggregate.read_eval(path)
    path.write_text("[1, 2]")
    with pytest.raises(ManidpError, match="not an evaluation result"):
        aggregate.read_eval(path)


def _summary(err, err_std, red, n=3):
    return pd.DataFrame([
        dict(dataset="cifar10", arch="resnet20", variant="baseline", point="", published="Baseline", n=n,
             top1_err_mean=7.8, top1_err_std=0.1, top5_err_mean=0.3, top5_err_std=0.0, top1_gap_mean=0.0,
             top1_gap_std=0.0, top5_gap_mean=0.0, top5_gap_std=0.0, reduction_pct_mean=0.0, reduction_pct_std=0.0),
        dict(dataset="cifar10", arch="resnet20", variant="manidp-paper", point="paper", published="ManiDP", n=n,
             top1_err_mean=err, top1_err_std=err_std, top5_err_mean=0.3, top5_err_std=0.0,
             top1_gap_mean=err - 7.8, top1_gap_std=err_std, top5_gap_mean=0.0, top5_gap_std=0.0,
             reduction_pct_mean=red, reduction_pct_std=0.5)])


@pytest.mark.parametrize("err, std, red, err_status, red_status", [
    (8.30, 0.05, 55.0, compare.WITHIN, compare.WITHIN),      # 0.35 <= 0.5; 0.8 <= 2
    (8.95, 0.30, 50.0, compare.WORSE, compare.WORSE),        # 1.0 > max(0.5, 2 x 0.3); 4.2 > 2
    (7.00, 0.05, 60.0, compare.BETTER, compare.BETTER),
    (9.00, 0.05, 53.0, compare.WORSE, compare.WITHIN),
])
def test_tolerance_statuses(pub, err, std, red, err_status, red_status):
    df = compare.compare(_summary(err, std, red), pub, "cifar10", compare.Tolerance(), smoke=False)
    got = df[(df["variant"] == "manidp-paper")].set_index("metric")
    assert got.loc["top1_err", "status"] == err_status
    assert got.loc["mac_reduction", "status"] == red_status
    assert got.loc["top1_err", "difference"] == pytest.approx(err - 7.95)
    assert got.loc["top1_gap", "published_source"].startswith("derived")   # Table 4 prints no gap
    assert got.loc["top5_err", "status"] == compare.NOT_COMPARABLE          # nor a top-5 error


def test_two_std_widens_the_tolerance(pub):
    df = compare.compare(_summary(8.95, 0.6, 54.2), pub, "cifar10", compare.Tolerance(), smoke=False)
    assert df.set_index(["variant", "metric"]).loc[("manidp-paper", "top1_err"), "status"] == compare.WITHIN


def test_smoke_is_never_a_pass(pub):
    df = compare.compare(_summary(7.95, 0.0, 54.2), pub, "cifar10", compare.Tolerance(), smoke=True)
    assert set(df[df["kind"] == "regenerated"]["status"]) == {compare.NOT_COMPARABLE}


def test_imagenet_comparison_flags_the_printed_gaps(pub):
    df = compare.compare(pd.DataFrame(columns=["dataset"]), pub, "imagenet", compare.Tolerance(), smoke=True)
    flags = df[df["kind"] == "published-inconsistency"]
    assert sorted(flags["method"]) == ["FBS", "FPGM"] and set(flags["status"]) == {compare.FLAGGED}
    md = compare.to_markdown(df, "imagenet", "smoke", True, compare.Tolerance(), [])
    assert "0.07" in md and "0.77" in md and "1.85" in md and "1.65" in md and "SMOKE RUN" in md


def test_templates_hold_no_numbers():
    for path in TEMPLATES.glob("*.j2"):
        assert not re.search(r"\d+\.\d+", path.read_text()), path


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
def test_tables_mark_our_rows_and_keep_printed_values(pub, dataset):
    summary = _summary(8.123, 0.25, 55.55).assign(dataset=dataset, gate_macs=1e4, dense_macs=4e7,
                                                  data_source="test data")
    if dataset == "imagenet":
        summary = summary.assign(arch="resnet34", published=["Baseline", "ManiDP-B"])
    ctx = tables.table_context(dataset, pub, summary, label="full")
    tex = tables.render(TEMPLATES, dataset, "tex", ctx)
    md = tables.render(TEMPLATES, dataset, "md", ctx)
    assert "(ours)$^\\dagger$ (n=3)" in tex and "(ours, regenerated) †** (n=3)" in md
    assert "8.12$\\pm$0.25" in tex and "8.12 ± 0.25" in md and "55.5" in md
    assert "multiply-accumulates" in tex and "SMOKE" not in tex
    if dataset == "imagenet":
        assert "0.07$^\\ddagger$" in tex and "1.85 ‡" in md and "27.46 $-$ 26.69 = 0.77" in tex


# ---------------------------------------------------------------------- the LaTeX tables fit a page

ARTICLE_PT, CVPR_TEXT_PT = 345.0, 496.0     # article 10 pt text width; CVPR's 6.875 in (table*)
CHAR_PT = 4.6       # one character at \\small (9 pt) Computer Modern: digits are 4.5 pt, letters less;
                    # against pdflatex the estimate below is 2 % above the measured widths (283, 465 pt)


def _widest_context(pub, dataset):
    """Every method of the experiment list regenerated over 3 seeds, with two-digit stds: the
    widest cells the tables can hold; as a smoke run, so that the framed SMOKE RUN note is there."""
    methods = {"cifar10": ["Baseline", "ManiDP", "FBS", "FPGM"],
               "imagenet": ["Baseline", "ManiDP-A", "ManiDP-B", "FBS", "FPGM"]}[dataset]
    rows = [dict(dataset=dataset, arch=arch, variant="baseline" if m == "Baseline" else f"{m.lower()}-paper",
                 point="" if m == "Baseline" else "paper", published=m, n=3, runs="seed0 seed1 seed2",
                 dense_macs=4e7, gate_macs=1e4, data_source="test data",
                 **{f"{k}_{s}": v for k in aggregate.METRICS for s, v in (("mean", 88.888), ("std", 10.555))})
           for arch in experiments.ARCHS[dataset][:3] if arch in set(published.rows(pub, dataset)["arch"])
           for m in methods]
    return tables.table_context(dataset, pub, pd.DataFrame(rows), label="smoke", smoke=True)   # + the framed note


def _plain(cell: str) -> str:
    cell = re.sub(r"\$\^\\(dagger|ddagger)\$", "+", cell)
    for tex, char in ((r"$\pm$", "±"), (r"$\downarrow$", "v"), (r"\%", "%"), (r"\ ", " "), ("--", "-")):
        cell = cell.replace(tex, char)
    return re.sub(r"\\[a-zA-Z]+|[{}$]", "", cell).strip()


def estimated_width_pt(tex: str) -> float:
    """The tabular's width without LaTeX: per column its widest cell at CHAR_PT per character,
    plus the 4 pt column gaps (\\tabcolsep) on either side of every column."""
    body = tex.split(r"\begin{tabular}")[1].split(r"\end{tabular}")[0]
    spec = body[body.index("{") + 1:body.index("}")]
    widths = [0.0] * len(spec)
    for row in body[body.index("}") + 1:].split(r"\\"):
        row = re.sub(r"\\(toprule|midrule|bottomrule)", "", row).strip()
        for i, cell in enumerate(row.split("&") if row else []):
            widths[i] = max(widths[i], len(_plain(cell)) * CHAR_PT)
    assert r"\setlength{\tabcolsep}{4pt}" in tex and r"\small" in tex
    return sum(widths) + 2 * 4.0 * len(spec)


@pytest.mark.parametrize("dataset, width_pt", [("cifar10", ARTICLE_PT), ("imagenet", CVPR_TEXT_PT)])
def test_tex_tables_fit_the_page(pub, dataset, width_pt):
    tex = tables.render(TEMPLATES, dataset, "tex", _widest_context(pub, dataset))
    assert r"\begin{table*}" in tex and tex.count(r"\begin{tabular}") == 1
    assert len(re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1)) == {"cifar10": 5, "imagenet": 8}[dataset]
    assert estimated_width_pt(tex) <= width_pt


@pytest.mark.parametrize("dataset, preamble", [
    ("cifar10", ""),                                                        # article, one column
    ("imagenet", r"\setlength{\textwidth}{6.875in}\setlength{\columnsep}{0.3125in}\twocolumn"),  # CVPR
])
def test_tex_tables_compile_without_overfull_boxes(pub, tmp_path, dataset, preamble):
    """pdflatex where it is installed (Debian: texlive-latex-base): no box of the table is overfull,
    and the estimate above is not below the width TeX measures."""
    import shutil
    import subprocess
    if not shutil.which("pdflatex"):
        pytest.skip("pdflatex not installed (apt-get install texlive-latex-base)")
    tex = tables.render(TEMPLATES, dataset, "tex", _widest_context(pub, dataset))
    (tmp_path / "t.tex").write_text(tex)
    rules = "".join(rf"\providecommand\{r}{{\hline}}" for r in ("toprule", "midrule", "bottomrule"))
    for name, pre in (("doc", preamble), ("narrow", r"\setlength{\textwidth}{1pt}")):
        (tmp_path / f"{name}.tex").write_text(
            rf"\documentclass[10pt]{{article}}{pre}\IfFileExists{{booktabs.sty}}{{\usepackage{{booktabs}}}}{{}}"
            rf"{rules}\begin{{document}}\input{{t.tex}}\end{{document}}")
        r = subprocess.run(["pdflatex", "-interaction=nonstopmode", f"{name}.tex"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-2000:]
    assert "Overfull \\hbox" not in (tmp_path / "doc.log").read_text(errors="replace")
    # with a 1 pt text width every line is overfull: the widest is the tabular, 1 pt less
    over = re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide\)", (tmp_path / "narrow.log").read_text(errors="replace"))
    measured = max(float(x) for x in over) + 1.0
    assert measured <= estimated_width_pt(tex) <= measured * 1.05


def test_tables_put_regenerated_competitors_beside_their_published_rows(pub):
    summary = pd.concat([_summary(8.1, 0.2, 54.0), _summary(9.5, 0.3, 53.0).iloc[[1]].assign(
        variant="fbs-paper", published="FBS")]).assign(gate_macs=1e4, dense_macs=4e7, data_source="test data")
    ctx = tables.table_context("cifar10", pub, summary, label="full")
    rows = [r["method"] for r in next(g for g in ctx["groups"] if g["model"] == "ResNet-20")["rows"]]
    i = rows.index("FBS")
    assert rows[i + 1] == "FBS (ours, regenerated)" and rows[rows.index("ManiDP") + 1] == "ManiDP (ours, regenerated)"
    assert "9.50 ± 0.30" in tables.render(TEMPLATES, "cifar10", "md", ctx)


def _study_runs(tmp_path):
    results = {("baseline", 0): _eval(80.0, 99.0, 0.0), ("baseline", 1): _eval(81.0, 99.0, 0.0),
               ("manidp-paper", 0): _eval(79.0, 99.0, 54.0), ("manidp-paper", 1): _eval(79.5, 99.0, 55.0),
               ("fbs-paper", 0): _eval(77.0, 99.0, 54.2), ("fbs-paper", 1): _eval(78.0, 99.0, 54.2),
               ("fbs-s30", 0): _eval(79.0, 99.0, 30.0)}
    specs = _specs(tmp_path, results)
    for s in specs:
        s["published"] = {"baseline": "Baseline", "manidp-paper": "ManiDP", "fbs-paper": "FBS"}.get(s["variant"], "")
        s["point"] = s["variant"].rsplit("-", 1)[-1] if s["variant"] != "baseline" else ""
    return aggregate.collect(specs)


def test_method_table_mean_std_best_and_paired_change(tmp_path):
    t = study.method_table(_study_runs(tmp_path)).set_index(["method", "point"])
    assert list(t.index) == [("baseline", ""), ("manidp", "paper"), ("fbs", "paper"), ("fbs", "s30")]
    m = t.loc[("manidp", "paper")]
    assert m["n"] == 2 and m["top1_mean"] == pytest.approx(79.25) and m["top1_best"] == 79.5
    assert m["top1_std"] == pytest.approx(0.353553, 1e-5)   # sample std of (79, 79.5)
    assert m["top1_change_mean"] == pytest.approx(((79.0 - 80.0) + (79.5 - 81.0)) / 2)  # paired per seed
    assert m["reduction_pct_mean"] == pytest.approx(54.5) and m["macs_mean_m"] == pytest.approx(40 * 0.455)
    assert math.isnan(t.loc[("fbs", "s30"), "top1_std"]) and t.loc[("fbs", "s30"), "seeds"] == "seed0"
    md = study.method_table_md(study.method_table(_study_runs(tmp_path)), "T", "cpu")
    assert "| manidp | paper | - | 54.2 | 2 | 79.25 ± 0.35 | 79.50 | -1.25 ± 0.35 | 18.20 | 54.5 ± 0.7 |" in md
    assert "| fbs | s30 | - | 54.2 | 1 | 79.00 | 79.00 | -1.00 | 28.00 | 30.0 |" in md


def test_method_curves_plot(tmp_path, pub):
    from manidp.report import plots
    fig = study.method_curves(_study_runs(tmp_path), pub, "cifar10", "cpu", smoke=True)
    ax = fig.axes[0]
    assert {t.get_text().split(" (")[0] for t in ax.get_legend().get_texts()} == {"baseline", "manidp", "fbs"}
    assert any(t.get_text() == "FBS (published)" for t in ax.texts)
    paths = plots.save(fig, tmp_path / "methods")
    assert all(p.stat().st_size > 1000 for p in paths)


# ---------------------------------------------------------------------- plots: nothing hides anything

def _boxes(fig):
    """Window extents of the point labels, the axes, the legends and the title of a drawn figure."""
    from matplotlib.text import Text
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.axison]
    labels = [Text.get_window_extent(t, r) for ax in axes for t in ax.texts]    # the text, not its leader line
    legends = [lg.get_window_extent(r) for lg in fig.legends + [ax.get_legend() for ax in axes] if lg]
    return labels, [ax.get_window_extent(r) for ax in axes], legends, fig._suptitle.get_window_extent(r)


def _assert_nothing_hidden(fig, n_labels):
    labels, axes, legends, title = _boxes(fig)
    assert len(labels) == n_labels and legends
    assert not [(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels)) if labels[i].overlaps(labels[j])]
    for box in labels + legends:
        assert not any(box.overlaps(a) for a in axes), "a label or legend lies on an axes"
    for lg in legends:
        assert not any(lg.overlaps(b) for b in labels) and not lg.overlaps(title)


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
def test_top1_vs_macs_labels_and_legend_hide_nothing(pub, dataset):
    from manidp.report import plots
    table = published.rows(pub, dataset)
    # ours exactly on the published ManiDP points, the densest place of the plot
    ours = [dict(dataset=dataset, arch=r["arch"], variant=f"{r['method'].lower()}-paper", point="paper",
                 published=r["method"], n=1, reduction_pct_mean=r["flops_reduction_pct"], reduction_pct_std=math.nan,
                 top1_err_mean=r["top1_err"], top1_err_std=math.nan)
            for _, r in table.iterrows() if r["method"].startswith("ManiDP")]
    fig = plots.top1_vs_macs(pd.DataFrame(ours), pub, dataset, "smoke", smoke=True)
    _assert_nothing_hidden(fig, len(table) + len(ours))
    assert "SMOKE RUN" in fig._suptitle.get_text()


def test_method_curves_of_the_cpu_study_hide_nothing(pub):
    """The committed CPU study (13 methods and variants, 3 published points on top of each other)."""
    runs = aggregate.read_csv(ROOT / "results" / "cpu_study" / "cifar10" / "runs.csv", "runs")
    fig = study.method_curves(runs, pub, "cifar10", "CIFAR-10 (JPEG q75 copy), CPU budget", smoke=True)
    _assert_nothing_hidden(fig, 4)            # Baseline, ManiDP, FBS, FPGM (published)
    title = fig._suptitle.get_text()
    assert "CPU budget: short budget" in title and "SMOKE" not in title



# ---------------------------------------------------------------------- the report's HTML pages

def test_markdown_tables_become_html_tables_cell_for_cell(pub):
    from manidp.report import html
    summary = _summary(8.123, 0.25, 55.55).assign(gate_macs=1e4, dense_macs=4e7, data_source="test data")
    md = tables.render(TEMPLATES, "cifar10", "md", tables.table_context("cifar10", pub, summary, label="full"))
    page = html.markdown_to_html(md)
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert page.count("<tr") == len(rows) and page.count("<table>") == 1
    assert page.count("<td") == sum(len(r.strip("|").split("|")) for r in rows[1:])
    assert "<b>ManiDP (ours, regenerated) †</b> (n=3)" in page and "8.12 ± 0.25" in page
    assert "<!--" not in page and "**" not in page and page.count("<li>") == md.count("\n- ")


def test_csv_page_keeps_every_cell_and_shows_nan_as_empty():
    from manidp.report import html
    df = pd.DataFrame({"arch": ["resnet20", "resnet32"], "top1": [91.23456, math.nan], "n": [3, 1]})
    page = html.csv_to_html(df)
    assert page.count("<tr>") == 3 and page.count("<td") == 6
    assert ">91.23<" in page and '<td class="num"></td>' in page and "nan" not in page


def test_run_summary_counts_the_statuses():
    from manidp.report import html
    rows = [("regenerated", "resnet20", "manidp-paper", s) for s in
            ("within tolerance", "within tolerance", "worse", "better")]
    rows += [("regenerated", "resnet32", "manidp-paper", "within tolerance"),
             ("published-inconsistency", "resnet34", "", "flagged")]
    df = pd.DataFrame(rows, columns=["kind", "arch", "variant", "status"])
    assert html.status_counts(df) == {"within tolerance": 3, "better": 1, "worse": 1, "not comparable": 0}
    rst = html.run_summary_rst({"cifar10": df}, {"cifar10": "Table 4 (CIFAR-10)"}, "full", smoke=False)
    assert rst.startswith("**Full run**")
    assert "| Table 4 (CIFAR-10) | 2      | 5                | 3                | 1      | 1     | 0              |" in rst
