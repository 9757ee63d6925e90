"""Cost of ManiDP over plain training, and of per-instance MAC accounting over plain evaluation.

    python benchmarks/bench_train.py --archs resnet20 resnet56 --batch-size 128 --threads 2
    python benchmarks/bench_train.py --modes eager compile --kinds plain manidp      # --step modes
    python benchmarks/bench_train.py --modes eager graph --kinds plain manidp fbs --device cuda

For each architecture, in one process and interleaved (A, B, A, B, ...) so both see the same
machine state: the median time of one training step of the plain model (CE only) and of the gated
model with both ManiDP losses, and of one evaluation batch of the gated model with and without
per-instance MAC accounting. Peak memory is measured in a fresh subprocess per configuration
(peak RSS minus the peak after the imports). Inputs are random tensors of CIFAR shape: the
benchmark measures compute, not data loading.

With ``--modes``: the step time of each ``--step`` mode (manidp/fast_step.py) of each --kinds step,
side by side in interleaved rounds, and each mode's ratio to eager (on CUDA, blocks of 10 steps
between synchronisations).
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
from manidp.models.gate import quantile_thresholds_
from manidp.train import make_optimizer, TrainConfig


def make_step(arch: str, kind: str, batch: int):
    """Return a closure running one step of ``kind`` on fixed random data."""
    torch.manual_seed(0)
    gated = kind != "plain-train"
    model = build_model(arch, gated=gated, fc2_init="kaiming" if gated else "zero")
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    if gated:   # prune about 40% of each gate's channels so masks and MAC counts are real
        quantile_thresholds_(model.eval(), x, 0.4)
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


def make_mode_step(arch: str, kind: str, batch: int, mode: str, device: str = "cpu"):
    """One training step of ``kind`` (plain, manidp, fbs) as ``manidp train --step mode`` runs it:
    ``eager`` is train.py's loop body without its per-step host reads (the lean eager step of
    :func:`make_step`), ``compile`` and ``graph`` are manidp.fast_step.StepRunner's steps."""
    from manidp import fast_step
    from manidp.methods import get_method
    from manidp.methods.fbs import set_density
    dev = torch.device(device)
    torch.manual_seed(0)
    method = {"plain": "baseline"}.get(kind, kind)
    model = build_model(arch) if method == "baseline" else get_method(method).build(arch, 10)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    if method == "manidp":   # prune about 40% of each gate's channels so masks are real
        for g in model.gates():
            torch.nn.init.normal_(g.fc2.weight, std=0.05)
        quantile_thresholds_(model.eval(), x, 0.4)
    elif method == "fbs":
        set_density(model, 0.6)
    model.to(dev).train()
    x, y = x.to(dev), y.to(dev)
    cfg = TrainConfig(method=method, arch=arch, out="unused", batch_size=batch, lr=0.01, step=mode,
                      losses=LossOptions(lambda_sparse=5e-3, lambda_sim=1.0))
    opt = make_optimizer(model, cfg)
    if mode == "eager":
        loss_of = (lambda logits: F.cross_entropy(logits, y)) if method == "baseline" else \
            (lambda logits: manidp_loss(model, logits, y, 2.0, cfg.losses)[0]) if method == "manidp" else \
            (lambda logits: get_method(method).loss(model, logits, y, cfg)[0])

        def step():
            loss = loss_of(model(x))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step
    runner = fast_step.StepRunner(model, opt, cfg, dev)
    runner.begin_epoch(2.0)
    return lambda: runner.step(x, y, first=False)


def time_modes(fns: dict, warmup: int, repeats: int, inner: int = 1, sync=None) -> dict:
    """Median seconds per call of each function, timed in interleaved rounds (A, B, C, A, B, C...)
    of ``inner`` calls each, so that all see the same machine state; ``sync`` ends a timed block
    (torch.cuda.synchronize on a GPU)."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for f in fns.values():
            f()
    sync()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            sync()
            times[k].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def compare_modes(archs, kinds, modes, batch: int, device: str, warmup: int, repeats: int) -> list[dict]:
    """Step time of every (arch, kind, mode), the modes of one (arch, kind) side by side."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    inner = 10 if sync else 1
    rows = []
    for arch in archs:
        for kind in kinds:
            t = time_modes({m: make_mode_step(arch, kind, batch, m, device) for m in modes},
                           warmup, repeats, inner, sync)
            rows.append({"arch": arch, "kind": kind, "batch": batch, "device": device,
                         **{f"{m}_ms": 1e3 * t[m] for m in modes},
                         **{f"{m}_vs_eager": t[m] / t["eager"] for m in modes if m != "eager" and "eager" in t}})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)   # each row as it is measured
    return rows


def _concurrent_child(arch: str, kind: str, batch: int, mode: str, device: str, steps: int, start_at: float) -> None:
    """One of N jobs on the device: warm up, wait for the common start, time ``steps`` steps."""
    step = make_mode_step(arch, kind, batch, mode, device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(5):
        step()
    sync()
    time.sleep(max(0.0, start_at - time.time()))
    for _ in range(steps):
        step()
    sync()
    print(json.dumps({"end": time.time()}))


def concurrent_jobs(counts, arch: str, kind: str, batch: int, mode: str, device: str, steps: int,
                    threads: int, settle_s: float = 20.0) -> list[dict]:
    """Aggregate training throughput of N separate processes stepping on one device at once (as N
    DAG jobs sharing a GPU through gpu_slots), against one process alone: every process warms up
    (compile, capture), then all start timing at the same moment."""
    rows, single = [], None
    for n in counts:
        start_at = time.time() + settle_s
        code = (f"import torch; torch.set_num_threads({threads}); from benchmarks.bench_train import _concurrent_child;"
                f"_concurrent_child({arch!r}, {kind!r}, {batch}, {mode!r}, {device!r}, {steps}, {start_at})")
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(n)]
        ends = []
        for pr in procs:
            out, _ = pr.communicate()
            if pr.returncode != 0:
                raise SystemExit(f"bench_train: error: a concurrent job exited with {pr.returncode}")
            ends.append(json.loads(out.strip().splitlines()[-1])["end"])
        img_s = n * steps * batch / (max(ends) - start_at)
        single = single or img_s
        rows.append({"jobs": n, "arch": arch, "kind": kind, "mode": mode, "device": device,
                     "aggregate_img_s": img_s, "speedup": img_s / single})
    return rows


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
    p.add_argument("--modes", nargs="+", default=None, choices=("eager", "compile", "graph"),
                   help="instead: step time of each --step mode side by side (first eager), per arch and --kinds")
    p.add_argument("--kinds", nargs="+", default=["plain", "manidp"], choices=("plain", "manidp", "fbs"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", nargs="+", type=int, default=None,
                   help="instead: aggregate throughput of N concurrent processes for each N (first 1), "
                        "of the first --archs/--kinds/--modes")
    p.add_argument("--steps", type=int, default=200, help="--jobs: timed steps per process")
    p.add_argument("--settle-s", type=float, default=20.0, help="--jobs: seconds every process gets to warm up")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)   # as manidp.train does on CPU
    b = args.batch_size
    if args.jobs:
        mode = (args.modes or ["eager"])[0]
        rows = concurrent_jobs(args.jobs, args.archs[0], args.kinds[0], b, mode, args.device, args.steps, args.threads,
                               args.settle_s)
        print("| jobs | aggregate img/s | speedup over 1 job |\n|---|---|---|")
        for r in rows:
            print(f"| {r['jobs']} | {r['aggregate_img_s']:.0f} | {r['speedup']:.2f} |")
        if args.out:
            from manidp.io import write_json
            write_json(args.out, {"concurrent": rows, "torch": torch.__version__})
        return
    if args.modes:
        rows = compare_modes(args.archs, args.kinds, args.modes, b, args.device, args.warmup, args.repeats)
        print("| arch | step | " + " | ".join(f"{m} ms" for m in args.modes) + " | " +
              " | ".join(f"{m} / eager" for m in args.modes if m != "eager") + " |")
        print("|---" * (2 + 2 * len(args.modes) - 1) + "|")
        for r in rows:
            print(f"| {r['arch']} | {r['kind']} | " + " | ".join(f"{r[m + '_ms']:.1f}" for m in args.modes) + " | " +
                  " | ".join(f"{r[m + '_vs_eager']:.3f}" for m in args.modes if m != "eager") + " |")
        if args.out:
            from manidp.io import write_json
            write_json(args.out, {"modes": rows, "torch": torch.__version__, "threads": args.threads})
        return
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
