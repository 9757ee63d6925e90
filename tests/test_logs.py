"""What a run writes to a log (no terminal, --quiet, as every DAG step runs): a line per quarter of each
pass and, per epoch, its time, training images/s, the elapsed time and the ETA."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

from manidp.progress import LineProgress, RunClock

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_line_progress_prints_at_each_quarter():
    clock, out = FakeClock(), io.StringIO()
    bar = LineProgress(1000, "prune epoch 3/5", file=out, clock=clock)
    for _ in range(10):                  # 100 images per second
        clock.now += 1.0
        bar.update(100)
    bar.close()
    assert out.getvalue().splitlines() == [   # the quarter is crossed at 300, 500, 800 and 1,000 images
        "prune epoch 3/5: 30% (300/1,000 img), 100 img/s, elapsed 00:03, ETA 00:07",
        "prune epoch 3/5: 50% (500/1,000 img), 100 img/s, elapsed 00:05, ETA 00:05",
        "prune epoch 3/5: 80% (800/1,000 img), 100 img/s, elapsed 00:08, ETA 00:02",
        "prune epoch 3/5: 100% (1,000/1,000 img), 100 img/s, elapsed 00:10, ETA 00:00",
    ]


def test_run_clock_eta_from_the_mean_epoch():
    clock = FakeClock()
    run = RunClock(epochs_left=4, images_per_epoch=5000, clock=clock)
    lines = []
    for train_s, rest_s in ((50.0, 10.0), (40.0, 20.0)):     # two 60 s epochs: 100 and 125 img/s
        run.start_epoch()
        clock.now += train_s
        run.trained()
        clock.now += rest_s
        lines.append(run.epoch_line())
    assert lines == ["60.0 s (100 img/s) | elapsed 01:00, ETA 03:00",
                     "60.0 s (125 img/s) | elapsed 02:00, ETA 02:00"]


def test_quiet_run_into_a_log(cifar_mini, tmp_path):
    """A real quiet run with stdout and stderr going to a pipe (no terminal)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "manidp", "train-baseline", "--arch", "resnet20", "--data",
                        str(cifar_mini), "--out", str(tmp_path / "run"), "--epochs", "2", "--batch-size", "64",
                        "--limit-train", "256", "--limit-test", "100", "--threads", "1", "--quiet"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    epochs = [line for line in r.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2
    for n, line in enumerate(epochs, 1):
        assert re.fullmatch(rf"epoch {n} \| train CE .* \| \d+\.\d s \([\d,]+ img/s\) \| "
                            rf"elapsed \d\d:\d\d, ETA \d\d:\d\d", line), line
    quarters = [line for line in r.stdout.splitlines() if line.startswith("baseline epoch ")]
    assert [re.match(r"baseline epoch (\d)/2: (\d+)% ", q).groups() for q in quarters] == [
        (str(e), str(p)) for e in (1, 2) for p in (25, 50, 75, 100)]      # 64 of 256 images per step
    assert all(re.search(r"img\), [\d,]+ img/s, elapsed \d\d:\d\d, ETA \d\d:\d\d$", q) for q in quarters)
    assert any(line.startswith("test: 100% (100/100 img)") for line in r.stdout.splitlines())
