"""The CPU-checkable parts of the GPU scripts: the schedule that fits a budget, Table 4's GPU-hours,
and benchmarks/gpu_reproduce.sh's plan (snakemake -n), commands and one-line errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import gpu_schedule  # noqa: E402


def test_schedule_fits_the_budget_with_the_papers_ratio():
    # 391 steps per epoch; a baseline epoch plus two ManiDP epochs at 2 + 2 x 3 ms = 391 x 8 ms = 3.128 s
    assert gpu_schedule.STEPS_PER_EPOCH == 391
    b, m = gpu_schedule.fit_epochs(540, plain_ms=2.0, manidp_ms=3.0, overhead_s=120)
    assert (b, m) == (int(420 // 3.128), 2 * int(420 // 3.128)) == (134, 268)
    assert gpu_schedule.fit_epochs(10_000, 2.0, 3.0) == (200, 400)           # the paper's, capped
    assert gpu_schedule.fit_epochs(100, 2.0, 3.0, overhead_s=120) == (1, 2)  # never nothing


def test_table4_gpu_hours_from_step_times():
    # the eager H200 figures for ResNet-20 alone: 391 x (200 x 7.2 + 400 x 49.6) ms = 2.31 h
    hours = gpu_schedule.table4_gpu_hours({"resnet20": {"plain": 7.2, "manidp": 49.6}})
    assert hours == pytest.approx(391 * (200 * 7.2 + 400 * 49.6) / 1e3 / 3600)
    assert gpu_schedule.table4_gpu_hours({"resnet20": {"plain": 7.2, "manidp": 49.6}}, speedup=4) == \
        pytest.approx(hours / 4)


def test_schedule_command_reads_bench_train_output(tmp_path):
    timings = tmp_path / "t.json"
    timings.write_text(json.dumps({"modes": [
        {"arch": "resnet20", "kind": "plain", "eager_ms": 7.0, "graph_ms": 2.0},
        {"arch": "resnet20", "kind": "manidp", "eager_ms": 50.0, "graph_ms": 3.0}]}))
    r = subprocess.run([sys.executable, "benchmarks/gpu_schedule.py", "epochs", "--timings", str(timings),
                        "--budget-s", "540", "--overhead-s", "120"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["134", "268"] and "ManiDP 3.00 ms" in r.stderr


def _reproduce(*args, **env):
    return subprocess.run(["bash", "benchmarks/gpu_reproduce.sh", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=300)


def test_gpu_reproduce_plans_the_dag_run(tmp_path, cifar_mini):
    """DRY_RUN=1: the DAG's plan for the baseline and ManiDP at 54.2%, with the chosen epochs and step."""
    r = _reproduce(str(cifar_mini), str(tmp_path / "out"), EPOCHS="3 6", DEVICE="cpu", STEP="compile", DRY_RUN="1")
    assert r.returncode == 0, r.stderr[-2000:] + r.stdout[-2000:]
    assert "baseline 3 epochs, ManiDP 6 epochs (shortened from the paper's 200/400 to fit 540 s)" in r.stdout
    commands = [line for line in r.stdout.splitlines() if "Shell command: manidp" in line]
    base = [c for c in commands if "train-baseline" in c]
    prune = [c for c in commands if "manidp prune" in c]
    assert len(base) == 1 and " --epochs 3 " in base[0] and " --step compile " in base[0]
    assert len(prune) == 1 and " --epochs 6 " in prune[0] and " --target-reduction 54.2 " in prune[0]
    assert " --lr 0.05 " in prune[0] and " --limit-train" not in prune[0]     # the paper's recipe, all images


def test_gpu_reproduce_without_data_is_one_line(tmp_path):
    r = _reproduce(str(tmp_path / "missing"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("gpu_reproduce: error: give the CIFAR-10 data as the first argument")
