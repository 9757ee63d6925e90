"""What fits on one GPU: the longest ResNet-20 Table 4 schedule in a wall-time budget, and Table 4's
GPU-hours at the paper's schedule, both from measured step times (benchmarks/bench_train.py --modes).

    python benchmarks/gpu_schedule.py epochs --budget-s 540 --timings step_times.json
    python benchmarks/gpu_schedule.py table4 --timings step_times.json [--concurrency concurrent.json]

The paper's schedule (reference section 6): dense baselines 200 epochs, ManiDP 400 epochs, batch
128, 50,000 CIFAR-10 training images (391 steps per epoch). A shorter schedule keeps that 1:2 ratio.
``epochs`` prints ``BASE MANIDP`` for benchmarks/gpu_reproduce.sh and, on stderr, how it got them.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

PAPER_BASELINE_EPOCHS, PAPER_MANIDP_EPOCHS = 200, 400
TRAIN_IMAGES, BATCH = 50_000, 128
STEPS_PER_EPOCH = math.ceil(TRAIN_IMAGES / BATCH)      # 391
TABLE4_ARCHS = ("resnet20", "resnet32", "resnet56")
# Everything of a reproduction that is not a training step, on a 16-core GPU machine: snakemake,
# decoding the JPEG copy (13 s on 2 cores), CUDA start-up, warm-up and capture, the reference-loss
# pass, calibration, the final evaluations and `manidp evaluate` of both models. A guess, stated so:
# the first GPU run measures it (gpu_reproduce.sh prints its wall time per step).
DEFAULT_OVERHEAD_S = 120.0


def fit_epochs(budget_s: float, plain_ms: float, manidp_ms: float, overhead_s: float = DEFAULT_OVERHEAD_S,
               steps_per_epoch: int = STEPS_PER_EPOCH) -> tuple[int, int]:
    """(baseline epochs, ManiDP epochs) with ManiDP = 2 x baseline, capped at the paper's (200, 400),
    such that b * steps * plain + 2b * steps * manidp fits in ``budget_s - overhead_s``; at least (1, 2)."""
    train_s = budget_s - overhead_s
    per_base_epoch = steps_per_epoch * (plain_ms + 2 * manidp_ms) / 1000.0
    b = int(train_s // per_base_epoch) if train_s > 0 else 0
    b = max(1, min(PAPER_BASELINE_EPOCHS, b))
    return b, min(PAPER_MANIDP_EPOCHS, 2 * b)


def table4_gpu_hours(step_ms: dict[str, dict[str, float]], speedup: float = 1.0) -> float:
    """GPU-hours of Table 4's 3 baselines and 3 ManiDP runs at the paper's schedule, from per-arch
    ``{"plain": ms, "manidp": ms}`` step times, divided by the throughput gain of running jobs
    concurrently on the GPU (``speedup``: aggregate img/s of N jobs over one job's)."""
    seconds = sum(STEPS_PER_EPOCH * (PAPER_BASELINE_EPOCHS * t["plain"] + PAPER_MANIDP_EPOCHS * t["manidp"]) / 1e3
                  for t in step_ms.values())
    return seconds / speedup / 3600.0


def step_times(rows: list[dict], mode: str) -> dict[str, dict[str, float]]:
    """bench_train.py --modes rows -> {arch: {kind: ms}} for one mode."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if f"{mode}_ms" in r:
            out.setdefault(r["arch"], {})[r["kind"]] = r[f"{mode}_ms"]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("epochs", "table4"))
    p.add_argument("--timings", required=True, help="bench_train.py --modes ... --out JSON")
    p.add_argument("--mode", default="graph", help="the --step mode whose times count (default: %(default)s)")
    p.add_argument("--budget-s", type=float, default=540.0)
    p.add_argument("--overhead-s", type=float, default=DEFAULT_OVERHEAD_S)
    p.add_argument("--concurrency", default=None, help="bench_train.py --jobs ... --out JSON (its best speedup)")
    args = p.parse_args(argv)
    with open(args.timings) as f:
        times = step_times(json.load(f)["modes"], args.mode)
    if args.what == "epochs":
        t = times["resnet20"]
        b, m = fit_epochs(args.budget_s, t["plain"], t["manidp"], args.overhead_s)
        print(f"schedule: ResNet-20 plain {t['plain']:.2f} ms, ManiDP {t['manidp']:.2f} ms per step ({args.mode}), "
              f"{STEPS_PER_EPOCH} steps per epoch, {args.budget_s:.0f} s budget - {args.overhead_s:.0f} s overhead -> "
              f"baseline {b} epochs, ManiDP {m} epochs (paper: {PAPER_BASELINE_EPOCHS}, {PAPER_MANIDP_EPOCHS})",
              file=sys.stderr)
        print(b, m)
        return
    speedup = 1.0
    if args.concurrency:
        with open(args.concurrency) as f:
            speedup = max(r["speedup"] for r in json.load(f)["concurrent"])
    missing = [a for a in TABLE4_ARCHS if a not in times]
    hours = table4_gpu_hours({a: times[a] for a in TABLE4_ARCHS if a in times}, speedup)
    print(f"Table 4 at the paper's schedule on one GPU ({args.mode} steps, concurrency speedup {speedup:.2f}): "
          f"{hours:.2f} GPU-hours" + (f" without {', '.join(missing)} (not timed)" if missing else ""))


if __name__ == "__main__":
    main()
