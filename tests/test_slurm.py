"""The Slurm profile (profiles/slurm): what its jobs ask for, and the smoke DAG through a real Slurm.

The dry runs (default test run) check that every submitted rule takes its partition, account, GPUs,
CPUs, memory and wall time from the config key `cluster`, and that a config training on the CPU
(the smoke config) asks for no GPU.

`test_smoke_dag_through_slurm` (marker `slurm`, deselected by default; `python -m pytest -m slurm`)
starts a private single-node Slurm with tests/slurm/cluster.sh (munged, slurmctld, slurmd; key,
slurm.conf, state, spool and logs in a temporary folder; free ports; the machine's real CPUs and
memory; no GPU; no accounting), runs the smoke DAG through it with the profile, and stops the daemons
afterwards whatever happened. It skips, with the reason on one line, where Slurm cannot be started:
no snakemake-executor-plugin-slurm, Debian's packages absent and not installable (tests/slurm/install.sh
needs root and apt-get), or a daemon that does not come up (the tail of its log is in the reason).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from test_pipeline import MINI, ROOT, job_counts, make_workdir, snakemake, write_yaml

SLURM_DIR = ROOT / "tests" / "slurm"
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo", "scancel")
PARTITION = "smoke"                       # the test cluster's partition, asked for via cluster.partition
START_TIMEOUT = 150                       # seconds for tests/slurm/cluster.sh start (each wait <= 60 s)
# The smoke DAG through Slurm: 6 min on the idle 2-core development machine (4.5 min locally with
# --cores 2); 18 min leaves room for a loaded machine and keeps CI (about 8 min without it) under 30.
RUN_TIMEOUT = int(os.environ.get("MANIDP_SLURM_RUN_TIMEOUT", "1080"))
SUBMITTED = {"synthetic_imagenet", "import_torchvision", "train_baseline", "prune", "measure"}
LOCAL = {"all", "check_data", "aggregate", "compare", "table", "method_table", "plots", "report_pages", "report_summary"}


def resources_of(output: str) -> dict[str, list[dict[str, str]]]:
    """rule -> the resources of each of its jobs, from a dry run's printout."""
    jobs: dict[str, list[dict[str, str]]] = {}
    rule = None
    for line in output.splitlines():
        m = re.match(r"(?:local)?rule (\w+):", line)
        if m:
            rule = m.group(1)
        elif rule and line.strip().startswith("resources:"):
            items = re.findall(r"(\w+)=([^,]+)", line.split("resources:", 1)[1])
            jobs.setdefault(rule, []).append({k: v.strip() for k, v in items})
            rule = None
    return jobs


# ----------------------------------------------------------------------------- dry runs: what jobs ask for

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]'")
    return make_workdir(tmp_path_factory.mktemp("slurm-dry"))


def test_smoke_config_asks_for_small_cpu_jobs(workdir):
    r = snakemake(workdir, "--dry-run", "--profile", "profiles/slurm", "--configfile", "config/smoke.yaml")
    assert r.returncode == 0, r.stderr[-2000:]
    jobs = resources_of(r.stdout)
    assert set(jobs) == SUBMITTED - {"import_torchvision"} | LOCAL
    for rule in ("train_baseline", "prune", "measure"):
        for res in jobs[rule]:
            assert not {"gpu", "gpu_model", "gres"} & set(res), (rule, res)       # device: cpu -> no GPU
            assert "cpus_per_task" not in res                                    # cpus: null -> threads (1)
            assert res["mem_mb"] == ("2000" if rule == "measure" else "3000")
            assert res["runtime"] == ("15" if rule == "measure" else "30")


@pytest.mark.parametrize("cluster, expect, absent", [
    ({}, {"gpu": "1", "cpus_per_task": "8", "mem_mb": "64000", "runtime": "4320"},
     {"gpu_model", "gres", "slurm_partition", "slurm_account"}),
    ({"partition": "gpu-a100", "account": "proj42", "gpu_model": "a100", "prune": {"gpus": 2, "mem_mb": 100000}},
     {"gpu": "2", "gpu_model": "a100", "slurm_partition": "gpu-a100", "slurm_account": "proj42", "mem_mb": "100000"},
     {"gres"}),
    ({"gpu_model": "h100", "gpu_request": "gres"}, {"gres": "gpu:h100:1"}, {"gpu", "gpu_model"}),
])
def test_training_jobs_take_partition_account_and_gpus_from_the_config(workdir, tmp_path, cluster, expect, absent):
    site = write_yaml(tmp_path / "site.yaml", {"cluster": cluster})
    r = snakemake(workdir, "paper_tables/imagenet.tex", "--dry-run", "--profile", "profiles/slurm",
                  "--configfile", str(site))
    assert r.returncode == 0, r.stderr[-2000:]
    jobs = resources_of(r.stdout)
    for res in jobs["prune"]:
        assert {k: res.get(k) for k in expect} == expect, res
        assert not absent & set(res), res
    for res in jobs["import_torchvision"]:                                        # a small job, never a GPU
        assert not {"gpu", "gres"} & set(res) and res["mem_mb"] == "4000" and res["cpus_per_task"] == "1"


def test_cpu_device_asks_for_no_gpu_even_when_gpus_are_configured(workdir, tmp_path):
    site = write_yaml(tmp_path / "site.yaml", {"device": "cpu", "cluster": {"gpu_model": "a100", "prune": {"gpus": 4}}})
    r = snakemake(workdir, "paper_tables/imagenet.tex", "--dry-run", "--profile", "profiles/slurm",
                  "--configfile", str(site))
    assert r.returncode == 0, r.stderr[-2000:]
    for rule in ("prune", "measure"):
        assert all(not {"gpu", "gpu_model", "gres"} & set(res) for res in resources_of(r.stdout)[rule])


# ----------------------------------------------------------------------------- a real single-node Slurm

def _one_line(text: str, lines: int = 6) -> str:
    tail = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(tail)[-900:] or "(no output)"


def _missing_programs() -> list[str]:
    return [p for p in PROGRAMS if shutil.which(p) is None]


def _slurm_unavailable() -> str | None:
    """Why Slurm cannot be started here (None: it can be tried). Installs Debian's packages when root."""
    if _missing_programs() and os.geteuid() == 0 and shutil.which("apt-get"):
        r = subprocess.run(["bash", str(SLURM_DIR / "install.sh")], capture_output=True, text=True, timeout=700)
        if _missing_programs():
            return f"Slurm is not installed and could not be installed: {_one_line(r.stdout + r.stderr, 2)}"
    missing = _missing_programs()
    if missing and os.geteuid() != 0:
        return (f"Slurm is not installed ({', '.join(missing)} missing) and this is not root: "
                f"as root, run bash tests/slurm/install.sh (Debian's slurmctld, slurmd, slurm-client, munge)")
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing) and there is no apt-get to install it"
    return None


def _cluster(*args: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SLURM_DIR / "cluster.sh"), *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A private single-node Slurm for this module, stopped at the end whatever happens."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]'")
    if not MINI.is_file():
        pytest.skip(f"{MINI} (the real CIFAR-10 subset) is not here")
    reason = _slurm_unavailable()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm-cluster")
    try:
        try:
            r = _cluster("start", str(state), PARTITION, timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            pytest.skip(f"Slurm did not start within {START_TIMEOUT} s: {_one_line(str(e.stderr or ''))}")
        if r.returncode != 0:
            pytest.skip(f"Slurm did not start (tests/slurm/cluster.sh exit {r.returncode}): "
                        f"{_one_line(r.stderr + r.stdout)}")
        # what `source DIR/env` sets: this cluster's slurm.conf, and on PATH the srun that keeps it in jobs
        env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf"),
               "PATH": os.pathsep.join([str(state / "bin"), os.environ.get("PATH", "")]),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        yield {"dir": state, "env": env}
    finally:
        _cluster("stop", str(state), timeout=120)


def _run_bounded(cmd: list[str], cwd: Path, env: dict, timeout: int) -> tuple[int | None, str, float]:
    """Run cmd in its own session; past the timeout: SIGINT (snakemake cancels its Slurm jobs), then
    SIGKILL to the whole session. Returns (exit status or None on timeout, output, seconds)."""
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out, time.time() - start
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        return None, out, time.time() - start


def _slurm_jobs(env: dict) -> list[dict[str, str]]:
    """Every job the test cluster still knows (MinJobAge keeps finished ones), as scontrol prints them."""
    r = subprocess.run(["scontrol", "--oneliner", "show", "job"], capture_output=True, text=True, env=env, timeout=30)
    jobs = []
    for line in r.stdout.splitlines():
        if line.startswith("JobId="):
            jobs.append(dict(re.findall(r"(\w+)=(\S*)", line)))
    return jobs


@pytest.mark.slurm
def test_smoke_dag_through_slurm(slurm, tmp_path):
    wd = make_workdir(tmp_path / "wd")
    site = write_yaml(wd / "site.yaml", {"data": {"cifar10": {"path": str(MINI)}}, "cluster": {"partition": PARTITION}})
    exe = shutil.which("snakemake")
    cmd = ([exe] if exe else [sys.executable, "-m", "snakemake"]) + [
        "--profile", "profiles/slurm", "--configfile", "config/smoke.yaml", str(site),
        "--slurm-no-account", "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5"]
    code, out, seconds = _run_bounded(cmd, wd, slurm["env"], RUN_TIMEOUT)
    logs = sorted((wd / ".snakemake" / "slurm_logs").rglob("*.log"))
    where = f"slurm logs: {[str(p) for p in logs[-3:]]}; daemon logs: {slurm['dir'] / 'log'}"
    assert code is not None, f"the smoke DAG through Slurm did not finish within {RUN_TIMEOUT} s:\n{out[-4000:]}\n{where}"
    assert code == 0, f"{out[-5000:]}\n{where}"
    counts = job_counts(out)
    print(f"smoke DAG through Slurm: {seconds:.0f} s ({counts['total']} jobs): {' '.join(cmd[1:])} (in {wd})")

    # Every rule ran; the submitted ones as Slurm jobs, the local ones not.
    for rule in SUBMITTED - {"import_torchvision"} | LOCAL:
        assert counts.get(rule, 0) >= 1, rule
    jobs = _slurm_jobs(slurm["env"])
    ran = Counter(re.sub(r"^rule_(\w+?)(_wildcards_.*)?$", r"\1", j["Comment"]) for j in jobs)
    assert ran == {rule: n for rule, n in counts.items() if rule in SUBMITTED}, (ran, counts)
    for job in jobs:
        assert job["JobState"] == "COMPLETED", job                                  # no failure, no retry
        assert job["Partition"] == PARTITION
        tres = " ".join(job.get(k, "") for k in ("TRES", "ReqTRES", "AllocTRES", "TresPerJob", "TresPerNode",
                                                 "TresPerTask", "TresPerSocket", "Gres"))
        assert "gpu" not in tres.lower(), job                                      # device cpu: no GPU
    small = {j["Comment"]: j for j in jobs}
    for comment, job in small.items():
        if comment.startswith(("rule_train_baseline", "rule_prune")):
            assert (job["NumCPUs"], job["MinMemoryNode"], job["TimeLimit"]) == ("1", "3000M", "00:30:00"), job
        elif comment.startswith("rule_measure"):
            assert (job["NumCPUs"], job["MinMemoryNode"], job["TimeLimit"]) == ("1", "2000M", "00:15:00"), job

    # The DAG's products, as in the local smoke run.
    root = wd / "results" / "smoke"
    for dataset in ("cifar10", "imagenet"):
        assert "SMOKE RUN" in (root / "paper_tables" / f"{dataset}.md").read_text()
        assert (root / dataset / "comparison.csv").is_file()
        assert (root / dataset / "plots" / "keep_rates.png").stat().st_size > 1000
