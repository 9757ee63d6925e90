"""The CUDA checks of benchmarks/cuda_check.sh that are not a CLI command.

1. `manidp evaluate` on CUDA vs on the CPU for one ManiDP checkpoint: top-1 within 0.5 point and
   mean MACs within 1% (cuDNN's TF32 and summation order may flip gates that sit on a threshold).
2. The channel-skipping engine (manidp.accel) moved to CUDA against the masked model: max relative
   error of the logits, loop and union strategies (the engine is built for the CPU; this says
   whether it also runs there).
3. Timings on CUDA (medians after warm-up, synchronised): a ManiDP training step against a plain
   one (batch 128, ResNet-20 and ResNet-56), and batch-1 latency of the dense, masked and engine
   ResNet-34 at 224x224 at the ManiDP-B point.
Every check records its failure instead of stopping the others; the exit code says if any failed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import bench_accel  # noqa: E402
from manidp import accel  # noqa: E402
from manidp.checkpoint import model_from_checkpoint  # noqa: E402
from manidp.losses import LossOptions, manidp_loss  # noqa: E402
from manidp.models import build_model  # noqa: E402
from manidp.train import TrainConfig, make_optimizer  # noqa: E402

DEV = torch.device("cuda")


def timed(fn, repeats: int = 20, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def eval_agreement(cuda_json: str, cpu_json: str) -> dict:
    a, b = json.loads(Path(cuda_json).read_text()), json.loads(Path(cpu_json).read_text())
    ma, mb = a["macs"]["macs_mean"], b["macs"]["macs_mean"]
    out = {"top1_cuda": a["top1"], "top1_cpu": b["top1"], "macs_mean_cuda": ma, "macs_mean_cpu": mb,
           "top1_diff_pt": abs(a["top1"] - b["top1"]), "macs_rel_diff": abs(ma - mb) / mb}
    out["ok"] = out["top1_diff_pt"] <= 0.5 and out["macs_rel_diff"] <= 0.01
    return out


def engine_on_cuda(checkpoint: str) -> dict:
    model, _ = model_from_checkpoint(checkpoint)
    model = model.eval().to(DEV)
    x = torch.randn(16, 3, 32, 32, device=DEV)
    with torch.no_grad():
        ref = model(x)
    engine = accel.convert(model).to(DEV)
    out = {}
    for strategy in ("loop", "union"):
        got = engine(x, strategy=strategy)
        out[f"max_rel_err_{strategy}"] = float((got - ref).abs().max() / ref.abs().max())
    out["ok"] = max(out["max_rel_err_loop"], out["max_rel_err_union"]) <= 1e-3
    return out


def train_step_ratio(arch: str) -> dict:
    steps = {}
    for kind in ("plain", "manidp"):
        torch.manual_seed(0)
        gated = kind == "manidp"
        model = build_model(arch, gated=gated, fc2_init="kaiming" if gated else "zero").to(DEV).train()
        opt = make_optimizer(model, TrainConfig(lr=0.01))
        x, y = torch.randn(128, 3, 32, 32, device=DEV), torch.randint(0, 10, (128,), device=DEV)

        def step(model=model, opt=opt, x=x, y=y, gated=gated):
            logits = model(x)
            loss = manidp_loss(model, logits, y, 2.0, LossOptions())[0] if gated else F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        steps[kind] = timed(step)
    return {"plain_ms": steps["plain"] * 1e3, "manidp_ms": steps["manidp"] * 1e3,
            "ratio": steps["manidp"] / steps["plain"], "ok": True}


def latency_resnet34() -> dict:
    model, x, reduction = bench_accel.prepare("resnet34", 8, 0)
    vs, _ = bench_accel.variants(model, x, engines=())      # ONNX Runtime / OpenVINO: CPU only
    out = {"mac_reduction_pct": reduction}
    for name in ("dense", "masked", "engine"):
        m = vs[name].to(DEV).eval()
        xi = x[:1].to(DEV)
        with torch.inference_mode():
            out[f"{name}_ms"] = timed(lambda m=m, xi=xi: m(xi)) * 1e3
    out["ok"] = True
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--eval-cuda", required=True)
    p.add_argument("--eval-cpu", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    checks = {"evaluate_cuda_vs_cpu": lambda: eval_agreement(a.eval_cuda, a.eval_cpu),
              "engine_on_cuda": lambda: engine_on_cuda(a.checkpoint),
              "train_step_resnet20": lambda: train_step_ratio("resnet20"),
              "train_step_resnet56": lambda: train_step_ratio("resnet56"),
              "latency_resnet34_b1": latency_resnet34}
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name, fn in checks.items():
        try:
            results[name] = fn()
        except Exception as e:  # report every check, even when one breaks
            results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                             "where": traceback.format_exc().splitlines()[-3:]}
        print(name, json.dumps(results[name]))
    Path(a.out).write_text(json.dumps(results, indent=2))
    return 0 if all(v["ok"] for k, v in results.items() if isinstance(v, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
