"""Latency of a gated model through the channel-skipping engine, against dense and masked runs.

Used by ``manidp latency`` (a trained checkpoint on real test images) and by
``benchmarks/bench_accel.py`` (random gates calibrated to the paper's MAC reductions). The variants
are timed side by side, interleaved in every pass in rotating order, so background load hits them
alike; latency is the median per image at batch 1.
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Callable

import torch

from . import accel, dense_engines, native
from .macs import InstanceCounter, dense_macs, kept_counts
from .models import ResNet, build_model
from .progress import progress


def dense_twin(model: ResNet) -> ResNet:
    """The plain ResNet with the gated model's weights (what the pruned model is compared with)."""
    dense = build_model(model.arch, num_classes=model.num_classes).eval()
    dense.load_state_dict({k: v for k, v in model.state_dict().items() if ".gate" not in k})
    return dense


class ChannelsLast(torch.nn.Module):
    """A model run the faster way on CPU: weights and input in channels-last (NHWC) memory format;
    the input's conversion is part of its latency."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def forward(self, x):
        return self.model(x.contiguous(memory_format=torch.channels_last))


# Every way of running the dense model that is timed; speedups are against the fastest one present.
DENSE = ("dense", "dense-nhwc", *dense_engines.ENGINES)
DENSE_NAMES = {"dense": "PyTorch NCHW", "dense-nhwc": "PyTorch NHWC", "onnxruntime": "ONNX Runtime",
               "openvino": "OpenVINO"}


def dense_variants(twin: ResNet, example: torch.Tensor, threads: int | None = None,
                   engines: tuple[str, ...] = dense_engines.ENGINES) -> tuple[dict, dict]:
    """The dense model in PyTorch (NCHW, channels-last) and in every installed dense engine of
    ``engines`` (ONNX Runtime, OpenVINO; see :mod:`manidp.dense_engines`), each checked against
    PyTorch on ``example``. Returns (variants, info: versions, missing engines and why, and each
    engine's max |logit - PyTorch logit|)."""
    variants = {"dense": twin, "dense-nhwc": ChannelsLast(twin)}
    runners, missing = dense_engines.build(twin, example, threads, engines)
    variants.update(runners)
    info = {"versions": {"torch": torch.__version__, **dense_engines.versions()}, "missing": missing,
            "max_abs_diff": {k: dense_engines.max_abs_diff(r, twin, example) for k, r in runners.items()}}
    return variants, info


def best_dense(ms: dict[str, float]) -> str:
    """The fastest dense variant among those timed (``ms``: variant -> median ms)."""
    return min((k for k in DENSE if k in ms), key=ms.get)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                clock: Callable[[], float] = time.perf_counter,
                on_round: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each fn, ``repeats`` rounds after ``warmup``, fns in rotating order."""
    names = list(fns)
    times = {k: [] for k in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for k in names:
                fns[k]()
        for r in range(repeats):
            for k in names[r % len(names):] + names[:r % len(names)]:
                t = clock()
                fns[k]()
                times[k].append(clock() - t)
            if on_round is not None:
                on_round()
    return times


def batch1_ms(variants: dict[str, Callable[[torch.Tensor], object]], images: torch.Tensor, repeats: int,
              clock: Callable[[], float] = time.perf_counter,
              on_round: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Milliseconds per image of each variant run on ``images`` one at a time: one value per round
    of :func:`interleaved`."""
    singles = [images[i:i + 1] for i in range(len(images))]

    def run(m):
        def f():
            for x in singles:
                m(x)
        return f

    times = interleaved({k: run(m) for k, m in variants.items()}, repeats, clock=clock, on_round=on_round)
    return {k: [1e3 * t / len(singles) for t in v] for k, v in times.items()}


TIE_TOLERANCE = 1e-5


@torch.no_grad()
def tie_margin(model: ResNet) -> torch.Tensor:
    """Per instance of the model's last forward pass: the smallest |saliency - threshold| over all
    gates and channels, relative to max(|threshold|, 1)."""
    return torch.stack([((g.saliency - g.threshold).abs() / g.threshold.abs().clamp(min=1.0)).min(1).values
                        for g in model.gates()], 1).min(1).values


def measure(model: ResNet, images: torch.Tensor, labels: torch.Tensor | None = None,
            repeats: int = 5, kernel: str = "auto", show_progress: bool = False,
            engines: tuple[str, ...] = dense_engines.ENGINES) -> dict:
    """Check the engine against the masked model on ``images`` (batch 1 each), then time dense
    (PyTorch NCHW and channels-last, and each installed dense engine of ``engines``), masked and
    engine. Returns a JSON-ready dict."""
    engine = accel.convert(model, kernel=kernel)
    size = images.shape[-1]
    with torch.no_grad():
        masked_logits = model(images)
        masked_kept = kept_counts(model)
        analytic = InstanceCounter(model, size).count(masked_kept).tolist()
        margin = tie_margin(model)
    engine_logits = engine(images)
    executed = engine.executed_macs
    dense = dense_macs(model, size)
    # A diverged checkpoint can overflow to inf/NaN on some images; the masked model then has no
    # value to compare with there (and NaN saliencies prune in both, by different routes).
    finite = torch.isfinite(masked_logits).all(1)
    # A saliency within float rounding of its threshold is decided by summation order, which differs
    # between any two implementations (and between thread counts of one): where the engine's gate
    # decisions differ from the masked model's, each such image must have one (else it is a bug).
    same = finite & (engine.kept == masked_kept).all(1)
    differ = finite & ~same
    ok = same.nonzero().flatten().tolist()
    e, m = engine_logits[same], masked_logits[same]
    check = {
        "nonfinite_masked": int((~finite).sum()),
        "same_decisions": len(ok),
        "differing_decisions": int(differ.sum()),
        "differing_unexplained": int((differ & (margin >= TIE_TOLERANCE)).sum()),
        "max_rel_logit_error": float((e - m).abs().max() / m.abs().max().clamp(min=1e-12)) if ok else None,
        "same_prediction": int((e.argmax(1) == m.argmax(1)).sum()),
        "executed_equals_analytic": [executed[i] for i in ok] == [analytic[i] for i in ok],
    }
    if labels is not None:
        check["top1_masked"] = 100.0 * float((masked_logits.argmax(1) == labels).float().mean())
        check["top1_engine"] = 100.0 * float((engine_logits.argmax(1) == labels).float().mean())
    variants, dense_info = dense_variants(dense_twin(model), images, engines=engines)
    variants.update(masked=model, engine=engine)
    n = len(images)
    # Counted in images run (all variants), so the bar's rate reads img/s.
    with progress(repeats * n * len(variants), "timing", disable=not show_progress) as bar:
        times = batch1_ms(variants, images, repeats, on_round=lambda: bar.update(n * len(variants)))
    ms = {k: statistics.median(v) for k, v in times.items()}
    best = best_dense(ms)
    theory = dense / (sum(executed) / len(executed))
    return {"arch": model.arch, "input_size": size, "images": n, "repeats": repeats,
            "threads": torch.get_num_threads(), "kernel": engine.kernel, "latency_ms": ms,
            "cpu_isa": native.cpu_isa(), "kernel_isa": native.kernel_isa() if engine.kernel == "native" else None,
            "dense_engines": dense_info,
            "best_dense": best, "speedup": ms[best] / ms["engine"],
            "speedup_vs_nchw_dense": ms["dense"] / ms["engine"], "dense_macs": dense,
            "executed_macs_mean": sum(executed) / len(executed),
            "reduction_pct": 100.0 * (1 - sum(executed) / len(executed) / dense),
            "theoretical_speedup": theory, **check}
