"""The Snakemake workflow: the full DAGs (dry runs, no data), bad input, and the smoke DAG end to end.

Every snakemake call runs in a temporary copy of the workflow files (Snakefile, workflow/, config/,
paper_tables/ inputs, profiles/), so the tests never touch the repository's results/ or .snakemake/.
The smoke DAG reads the real CIFAR-10 subset cifar10-mini.tgz, found as tests/datapaths.py says
($MANIDP_DATA, ../shared/data, resources/data; skipped without it).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
from datapaths import MINI          # $MANIDP_DATA, ../shared/data, resources/data (tests/datapaths.py)
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "profiles", "paper_tables/published.csv",
                  "paper_tables/templates")
FULL_JOBS = {
    "imagenet": {"check_data": 1, "import_torchvision": 2, "prune": 8, "measure": 10, "aggregate": 1, "table": 1},
    "cifar10": {"check_data": 1, "train_baseline": 3, "prune": 9, "measure": 12, "aggregate": 1, "table": 1},
}


def make_workdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src, dst = ROOT / name, path / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    return path


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    exe = shutil.which("snakemake")
    cmd = [exe] if exe else [sys.executable, "-m", "snakemake"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(cmd + list(args), cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)


def job_counts(output: str) -> dict[str, int]:
    """The "Job stats" table of a snakemake run or dry run."""
    block = output.split("Job stats:")[1]
    counts = {}
    for line in block.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp("workflow"))


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# ----------------------------------------------------------------------------- full DAGs, no data

@pytest.mark.parametrize("dataset", ["imagenet", "cifar10"])
def test_full_dag_dry_run_without_data(workdir, dataset):
    r = snakemake(workdir, "-n", f"paper_tables/{dataset}.tex")
    assert r.returncode == 0, r.stderr[-2000:]
    counts = job_counts(r.stdout + r.stderr)
    assert counts.pop("total") == sum(FULL_JOBS[dataset].values()) == {"imagenet": 23, "cifar10": 27}[dataset]
    assert counts == FULL_JOBS[dataset]
    assert not (workdir / "results").exists()


def test_seeds_multiply_the_runs(workdir):
    r = snakemake(workdir, "-n", "paper_tables/cifar10.tex", "--config", "seeds=[0,1,2]")
    assert r.returncode == 0, r.stderr[-2000:]
    counts = job_counts(r.stdout + r.stderr)
    assert counts["train_baseline"] == 9 and counts["prune"] == 27 and counts["measure"] == 36


def test_slurm_profile_dry_run(workdir):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]'")
    r = snakemake(workdir, "--dry-run", "--profile", "profiles/slurm", "paper_tables/imagenet.tex")
    assert r.returncode == 0, r.stderr[-2000:]
    assert job_counts(r.stdout + r.stderr)["total"] == 23
    assert re.search(r"rule prune:.*?resources:[^\n]*gpu=1", r.stdout, re.S)


def test_local_profile_shares_one_gpu_and_passes_the_step_mode(workdir):
    """--resources gpu_slots=N: every training job claims one slot of the GPU (docs/gpu.md); the
    config's step and amp_dtype reach `manidp prune`."""
    r = snakemake(workdir, "paper_tables/cifar10.tex", "-n", "--profile", "profiles/local",
                  "--resources", "gpu_slots=6", "--config",
                  'manidp={"cifar10": {"step": "graph", "amp": true, "amp_dtype": "bfloat16"}}')
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"rule prune:.*?resources:[^\n]*gpu_slots=1", r.stdout, re.S)
    assert re.search(r"rule train_baseline:.*?resources:[^\n]*gpu_slots=1", r.stdout, re.S)
    prune = [line for line in r.stdout.splitlines() if "manidp prune" in line]
    assert prune and all(f" {o} " in line for line in prune for o in ("--step graph", "--amp", "--amp-dtype bfloat16"))


# ----------------------------------------------------------------------------- bad input: one line

@pytest.mark.parametrize("args, line", [
    (["--config", "foo=1"], "invalid config at top level: Additional properties are not allowed ('foo' was unexpected)"),
    (["--config", "seeds=abc"], "invalid config at seeds: 'abc' is not of type 'array'"),
    (["--config", "device=tpu"], "invalid config at device: 'tpu' does not match"),
])
def test_config_errors_are_one_clear_line(workdir, args, line):
    r = snakemake(workdir, "-n", *args)
    assert r.returncode != 0
    assert line in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]


@pytest.mark.parametrize("overlay, line", [
    ({"baseline": {"cifar10": {"epoch": 3}}},
     "invalid config at baseline.cifar10: Additional properties are not allowed ('epoch' was unexpected)"),
    ({"tolerance": {"err_pt": "half"}}, "invalid config at tolerance.err_pt: 'half' is not of type 'number'"),
    ({"smoke": True}, "smoke: true needs its own results and tables folders"),
    ({"archs": ["resnet99"]}, "invalid config at archs: 'resnet99' is not an architecture of"),
])
def test_config_file_errors(workdir, tmp_path, overlay, line):
    r = snakemake(workdir, "-n", "--configfile", str(write_yaml(tmp_path / "bad.yaml", overlay)))
    assert r.returncode != 0
    assert line in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]


def test_unknown_architecture_in_the_experiment_list(workdir, tmp_path):
    tsv = tmp_path / "experiments.tsv"
    tsv.write_text("dataset\tarch\tpoint\tpublished\ncifar10\tresnet20\tpaper\tManiDP\ncifar10\tresnet99\tpaper\tManiDP\n")
    r = snakemake(workdir, "-n", "--config", f"experiments={tsv}")
    assert r.returncode != 0
    assert f"{tsv} row 2: unknown architecture 'resnet99' (column arch)" in r.stdout + r.stderr


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
def test_missing_dataset_stops_before_training_naming_the_key(tmp_path, dataset):
    wd = make_workdir(tmp_path / "wd")
    r = snakemake(wd, "--cores", "2", f"paper_tables/{dataset}.tex", timeout=300)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert re.search(rf"manidp: error: data\.{dataset}\.path: \S+ (does not exist|is not a folder); "
                     rf"set data\.{dataset}\.path", out), out[-3000:]
    # one error: the torchvision import (ImageNet) waits for the data check instead of failing beside it
    assert {line for line in out.splitlines() if "manidp: error:" in line} == \
        {line for line in out.splitlines() if "manidp: error: data." in line}, out[-3000:]
    assert not list((wd / "results").rglob("train.log")), "a training step started"


# ----------------------------------------------------------------------------- the smoke DAG

@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    if not MINI.is_file():
        pytest.skip(f"{MINI} (the real CIFAR-10 subset) is not here")
    wd = make_workdir(tmp_path_factory.mktemp("smoke"))
    overlay = write_yaml(wd / "local.yaml", {"data": {"cifar10": {"path": str(MINI)}}})
    args = ("--configfile", "config/smoke.yaml", str(overlay))
    start = time.time()
    r = snakemake(wd, "--cores", "2", *args, timeout=1500)
    seconds = time.time() - start
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    print(f"smoke DAG: {seconds:.0f} s with --cores 2 ({job_counts(r.stdout + r.stderr)['total']} jobs)")
    return {"dir": wd, "args": args, "seconds": seconds, "root": wd / "results" / "smoke",
            "tables": wd / "results" / "smoke" / "paper_tables", "output": r.stdout + r.stderr}


def _evals(root: Path, dataset: str) -> dict[str, dict]:
    return {str(p.relative_to(root / dataset).parent): json.loads(p.read_text())
            for p in sorted((root / dataset).rglob("eval.json"))}


@pytest.mark.slow
def test_smoke_runs_every_rule(smoke):
    counts = job_counts(smoke["output"])
    for rule in ("synthetic_imagenet", "check_data", "train_baseline", "prune", "measure", "aggregate",
                 "compare", "table", "method_table", "plots"):
        assert counts.get(rule, 0) >= 1, rule
    assert not (smoke["dir"] / "paper_tables" / "cifar10.tex").exists()      # smoke never writes there


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
def test_smoke_tables_hold_the_measured_numbers(smoke, dataset):
    root, tables = smoke["root"], smoke["tables"]
    tex = (tables / f"{dataset}.tex").read_text()
    md = (tables / f"{dataset}.md").read_text()
    assert "SMOKE RUN" in tex and "SMOKE RUN" in md and tex.count(r"\begin{tabular}") == 1
    evals = _evals(root, dataset)
    assert any(k.startswith("resnet") and "manidp-" in k for k in evals)
    comparison = pd.read_csv(root / dataset / "comparison.csv")
    summary = pd.read_csv(root / dataset / "summary.csv")
    for key, result in evals.items():
        arch, variant, _ = key.split("/")
        err = 100.0 - result["top1"]
        reduction = result["macs"]["reduction_pct"]
        method = summary.set_index(["arch", "variant"]).loc[(arch, variant), "published"]
        row = next(line for line in md.splitlines() if f"**{method} (ours, regenerated) †** (n=1)" in line
                   and line in _rows_of(md, arch))
        assert f"| {err:.2f} |" in row and f"| {reduction:.1f} |" in row, (row, err, reduction)
        assert f"{err:.2f}" in tex
        got = comparison[(comparison["arch"] == arch) & (comparison["variant"] == variant)].set_index("metric")
        assert got.loc["top1_err", "ours_mean"] == pytest.approx(err, abs=1e-9)
        if variant != "baseline":
            assert got.loc["mac_reduction", "ours_mean"] == pytest.approx(reduction, abs=1e-9)
    sources = " ".join(str(s) for s in summary["data_source"])
    assert ("synthetic" in sources) == (dataset == "imagenet")


def _rows_of(md: str, arch: str) -> list[str]:
    """The Markdown table lines of one architecture's group."""
    model = "ResNet-" + arch.removeprefix("resnet")
    lines, inside = [], False
    for line in md.splitlines():
        if line.startswith(f"| {model} |"):
            inside = True
        elif re.match(r"\| ResNet-\d+ \|", line):
            inside = False
        if inside and line.startswith("|"):
            lines.append(line)
    return lines


@pytest.mark.slow
def test_smoke_comparisons_are_never_a_pass(smoke):
    for dataset in ("cifar10", "imagenet"):
        df = pd.read_csv(smoke["root"] / dataset / "comparison.csv")
        ours = df[df["kind"] == "regenerated"]
        assert len(ours) > 0 and set(ours["status"]) == {"not comparable"}
        assert "SMOKE RUN" in (smoke["root"] / dataset / "comparison.md").read_text()
    df = pd.read_csv(smoke["root"] / "imagenet" / "comparison.csv")
    flags = df[df["kind"] == "published-inconsistency"].set_index("method")
    assert flags.loc["FPGM", "published"] == 0.07 and "0.77" in flags.loc["FPGM", "note"]
    assert flags.loc["FBS", "published"] == 1.85 and "1.65" in flags.loc["FBS", "note"]
    md = (smoke["root"] / "imagenet" / "comparison.md").read_text()
    assert "Inconsistencies in the published table" in md and "**flagged**" in md
    assert "0.07 ‡" in (smoke["tables"] / "imagenet.md").read_text()


@pytest.mark.slow
def test_smoke_plots_and_report(smoke):
    for dataset in ("cifar10", "imagenet"):
        for name in ("top1_vs_macs", "macs_histogram", "keep_rates", "methods"):
            for ext in ("png", "pdf"):
                assert (smoke["root"] / dataset / "plots" / f"{name}.{ext}").stat().st_size > 1000
    r = snakemake(smoke["dir"], *smoke["args"], "--report", "report.html")
    assert r.returncode == 0, r.stderr[-3000:]
    html = (smoke["dir"] / "report.html").read_text()
    for dataset in ("cifar10", "imagenet"):      # every table a page of the report, listed by its labels
        for page in ("table", "comparison", "methods", "summary", "runs"):
            assert f'"results/smoke/{dataset}/report/{page}.html"' in html, page
    assert '"labels": {"dataset": "CIFAR-10", "table": "Table 4: the paper' in html
    assert "Short-budget run" in html and "Table 1 (ImageNet)" in html       # the landing page's summary

    # A report of a partly built DAG: one line naming the missing output and the command to build it.
    page = smoke["root"] / "imagenet" / "report" / "runs.html"
    page.rename(page.with_suffix(".bak"))
    try:
        r = snakemake(smoke["dir"], *smoke["args"], "--report", "again.html")
    finally:
        page.with_suffix(".bak").rename(page)
    last = (r.stdout + r.stderr).strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith("manidp: error: the report needs the built DAG, and "
                                                 "results/smoke/imagenet/report/runs.html is missing (1 of "), last
    assert "build it first: snakemake --cores all --configfile config/smoke.yaml" in last
    assert not (smoke["dir"] / "again.html").exists()


@pytest.mark.slow
def test_smoke_rerun_continues_from_completed_steps(smoke):
    wd, args, root = smoke["dir"], smoke["args"], smoke["root"]
    r = snakemake(wd, "-n", *args)
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr, r.stdout[-2000:]

    # A truncated eval JSON: the next run stops with one line naming it...
    bad = root / "cifar10" / "resnet20" / "manidp-paper" / "seed0" / "eval.json"
    bad.write_text(bad.read_text()[:40])
    r = snakemake(wd, "--cores", "2", *args)
    assert r.returncode != 0
    assert re.search(rf"manidp: error: {re.escape(str(bad.relative_to(wd)))}: not valid JSON .* delete it and "
                     rf"rerun snakemake with --forcerun aggregate", r.stdout + r.stderr), (r.stdout + r.stderr)[-3000:]
    # ... and once it is deleted, only its measurement and what depends on it run again. (Snakemake
    # does not rerun for a missing intermediate file while the final outputs exist: hence --forcerun.)
    bad.unlink()
    r = snakemake(wd, "-n", "--forcerun", "aggregate", *args)
    counts = job_counts(r.stdout + r.stderr)
    assert counts["measure"] == 1 and "train_baseline" not in counts and "prune" not in counts, counts
    r = snakemake(wd, "--cores", "2", "--forcerun", "aggregate", *args)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert json.loads(bad.read_text())["top1"] >= 0

    # A truncated checkpoint: measuring it fails with one line naming the file.
    ckpt = root / "cifar10" / "resnet20" / "baseline" / "seed0" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    (root / "cifar10" / "resnet20" / "baseline" / "seed0" / "eval.json").unlink()
    r = snakemake(wd, "--cores", "1", "--forcerun", "aggregate", *args)
    assert r.returncode != 0
    assert re.search(r"manidp: error: checkpoint \S+checkpoint\.pt cannot be read", r.stdout + r.stderr)
