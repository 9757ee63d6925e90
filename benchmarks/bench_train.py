"""Cost of ManiDP over plain training, and of per-instance MAC accounting over plain evaluation.

    python benchmarks/bench_train.py --archs resnet20 resnet56 --batch-size 128 --threads 2

For each architecture, in one process and interleaved (A, B, A, B, ...) so both see the same
machine state: the median time of one training step of the plain model (CE only) and of the gated
model with both ManiDP losses, and of one evaluation batch of the gated model with and without
per-instance MAC accounting. Peak memory is measured in a fresh subprocess per configuration
(peak RSS minus the peak after the imports). Inputs are random tensors of CIFAR shape: the
benchmark measures compute, not data loading.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from manidp.evaluate import evaluate
from manidp.losses import LossOptions, manidp_loss
from manidp.models import build_model
from manidp.train import make_optimizer, TrainConfig


def make_step(arch: str, kind: str, batch: int):
    """Return a closure running one step of ``kind`` on fixed random data."""
    torch.manual_seed(0)
    gated = kind != "plain-train"
    model = build_model(arch, gated=gated, fc2_init="kaiming" if gated else "zero")
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    if gated:   # prune about 40% of each gate's channels so masks and MAC counts are real
        model.eval()
        with torch.no_grad():
            model(x)
            for g in model.gates():
                g.threshold.fill_(float(torch.quantile(g.saliency.flatten(), 0.4)))
    if kind.endswith("train"):
        model.train()
        opt = make_optimizer(model, TrainConfig(lr=0.01))
        opts = LossOptions()

        def step():
            logits = model(x)
            if gated:
                loss = manidp_loss(model, logits, y, reference_loss=2.0, opts=opts)[0]
            else:
                loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step
    loader = [(x, y)]
    count = kind == "eval-macs"
    return lambda: evaluate(model, loader, torch.device("cpu"), count_macs=count, show_progress=False)


def time_pair(a, b, warmup: int, repeats: int) -> tuple[float, float]:
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        for f, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            f()
            out.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def peak_memory_mb(arch: str, kind: str, batch: int, threads: int) -> float:
    """Peak RSS growth (MB) over the imports of building ``kind`` and running 3 steps, in a fresh interpreter."""
    # VmHWM (peak resident set of this process) rather than ru_maxrss, which a child inherits from
    # its parent across exec.
    code = (f"import torch; torch.set_num_threads({threads}); torch.set_flush_denormal(True);"
            f"from benchmarks.bench_train import make_step, vm_hwm_mb; r0 = vm_hwm_mb();"
            f"s = make_step({arch!r}, {kind!r}, {batch}); s(); s(); s();"
            f"print(vm_hwm_mb() - r0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=["resnet20", "resnet56"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)   # as manidp.train does on CPU
    b = args.batch_size
    rows = []
    for arch in args.archs:
        plain, gated = time_pair(make_step(arch, "plain-train", b), make_step(arch, "manidp-train", b),
                                 args.warmup, args.repeats)
        ev, ev_macs = time_pair(make_step(arch, "eval", b), make_step(arch, "eval-macs", b),
                                args.warmup, args.repeats * 2)
        mem = {k: peak_memory_mb(arch, k, b, args.threads)
               for k in ("plain-train", "manidp-train", "eval", "eval-macs")}
        rows.append({"arch": arch, "batch": b, "threads": args.threads,
                     "plain_train_img_s": b / plain, "manidp_train_img_s": b / gated,
                     "train_step_ratio": gated / plain,
                     "eval_img_s": b / ev, "eval_macs_img_s": b / ev_macs, "eval_ratio": ev_macs / ev,
                     "peak_mb": mem})
    print(f"| arch | plain train img/s | ManiDP train img/s | step time ratio (target <= 1.25) | "
          f"eval img/s | eval+MACs img/s | ratio (target <= 1.05) | peak MB plain / ManiDP / eval / eval+MACs |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["peak_mb"]
        print(f"| {r['arch']} | {r['plain_train_img_s']:.0f} | {r['manidp_train_img_s']:.0f} | "
              f"{r['train_step_ratio']:.3f} | {r['eval_img_s']:.0f} | {r['eval_macs_img_s']:.0f} | "
              f"{r['eval_ratio']:.3f} | {m['plain-train']:.0f} / {m['manidp-train']:.0f} / "
              f"{m['eval']:.0f} / {m['eval-macs']:.0f} |")
    if args.out:
        from manidp.io import write_json
        write_json(args.out, {"results": rows, "torch": torch.__version__})


if __name__ == "__main__":
    main()
