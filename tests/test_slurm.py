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
import yaml

from test_pipeline import MINI, ROOT, job_counts, make_workdir, snakemake, write_yaml

SLURM_DIR = ROOT / "tests" / "slurm"
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo", "scancel")
PARTITION = "smoke"                       # the test cluster's partition, asked for via cluster.partition
START_TIMEOUT = 150                       # seconds for tests/slurm/cluster.sh start (each wait <= 60 s)
# The smoke DAG through Slurm takes 6 min on the idle 2-core development machine and 16 min on a loaded
# one: no fixed timeout fits every machine. The run is bounded by its progress instead: it fails when
# nothing happens (no line of output, no job completed) for longer than the longest wall time any of its
# jobs asks Slurm for (config/smoke.yaml, cluster.*.runtime), since a job running past it is killed.
SMOKE_CLUSTER = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())["cluster"]
STALL_TIMEOUT = int(os.environ.get("MANIDP_SLURM_STALL_TIMEOUT",
                                   60 * max(job["runtime"] for job in SMOKE_CLUSTER.values())))
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


def _run_while_progressing(cmd: list[str], cwd: Path, env: dict, stall: int,
                           progress_files: list[Path]) -> tuple[int | None, str, float]:
    """Run cmd in its own session for as long as it makes progress: its output or one of
    ``progress_files`` (the job-completion log) grew within the last ``stall`` seconds. Past that:
    SIGINT (snakemake cancels its Slurm jobs), then SIGKILL to the whole session. Returns (exit status,
    or None when it stalled; output; seconds)."""
    start = last = time.time()
    out_path = cwd / "snakemake.out"
    with open(out_path, "w") as out_file:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out_file, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        seen = None
        while proc.poll() is None:
            time.sleep(2)
            now = tuple(p.stat().st_size if p.exists() else -1 for p in [out_path, *progress_files])
            if now != seen:
                seen, last = now, time.time()
            elif time.time() - last > stall:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                return None, out_path.read_text(), time.time() - start
    return proc.returncode, out_path.read_text(), time.time() - start


def _completed_jobs(jobcomp: Path) -> dict[str, dict[str, str]]:
    """JobId -> the fields of its line in the cluster's job-completion log (jobcomp/filetxt in
    slurm.conf.in): one line per finished job, kept for good (scontrol forgets jobs after MinJobAge)."""
    lines = jobcomp.read_text().splitlines() if jobcomp.exists() else []
    jobs = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in lines if line.startswith("JobId=")]
    return {j["JobId"]: j for j in jobs}


def _submitted_jobs(output: str) -> dict[str, str]:
    """Slurm job id -> rule, from snakemake's own log ("... submitted with SLURM jobid N (log:
    .../slurm_logs/rule_<rule>/...)")."""
    return dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_([^/\s]+)/", output))


@pytest.mark.slurm
def test_smoke_dag_through_slurm(slurm, tmp_path):
    wd = make_workdir(tmp_path / "wd")
    site = write_yaml(wd / "site.yaml", {"data": {"cifar10": {"path": str(MINI)}}, "cluster": {"partition": PARTITION}})
    exe = shutil.which("snakemake")
    cmd = ([exe] if exe else [sys.executable, "-m", "snakemake"]) + [
        "--profile", "profiles/slurm", "--configfile", "config/smoke.yaml", str(site),
        "--slurm-no-account", "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5"]
    jobcomp = slurm["dir"] / "log" / "jobcomp.log"
    code, out, seconds = _run_while_progressing(cmd, wd, slurm["env"], STALL_TIMEOUT, [jobcomp])
    logs = sorted((wd / ".snakemake" / "slurm_logs").rglob("*.log"))
    where = f"slurm logs: {[str(p) for p in logs[-3:]]}; daemon logs: {slurm['dir'] / 'log'}"
    assert code is not None, (f"the smoke DAG through Slurm made no progress for {STALL_TIMEOUT} s (after "
                              f"{seconds:.0f} s):\n{out[-4000:]}\n{where}")
    assert code == 0, f"{out[-5000:]}\n{where}"
    counts = job_counts(out)
    print(f"smoke DAG through Slurm: {seconds:.0f} s ({counts['total']} jobs): {' '.join(cmd[1:])} (in {wd})")

    # Every rule ran; the submitted ones as Slurm jobs, the local ones not.
    for rule in SUBMITTED - {"import_torchvision"} | LOCAL:
        assert counts.get(rule, 0) >= 1, rule
    submitted, completed = _submitted_jobs(out), _completed_jobs(jobcomp)
    assert Counter(submitted.values()) == {rule: n for rule, n in counts.items() if rule in SUBMITTED}, \
        (submitted, counts)
    assert set(completed) == set(submitted), (completed, submitted)        # each job finished once: no retry
    for jobid, rule in submitted.items():
        job = completed[jobid]
        assert job["JobState"] == "COMPLETED" and job["Partition"] == PARTITION, job
        assert "gpu" not in job["Tres"].lower(), job                                # device cpu: no GPU
        tres = dict(item.split("=", 1) for item in job["Tres"].split(","))
        if rule in ("train_baseline", "prune"):
            assert (job["ProcCnt"], tres["mem"], job["TimeLimit"]) == ("1", "3000M", "30"), job
        elif rule == "measure":
            assert (job["ProcCnt"], tres["mem"], job["TimeLimit"]) == ("1", "2000M", "15"), job

    # The DAG's products, as in the local smoke run.
    root = wd / "results" / "smoke"
    for dataset in ("cifar10", "imagenet"):
        assert "SMOKE RUN" in (root / "paper_tables" / f"{dataset}.md").read_text()
        assert (root / dataset / "comparison.csv").is_file()
        assert (root / dataset / "plots" / "keep_rates.png").stat().st_size > 1000
