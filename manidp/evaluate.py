"""Top-1/top-5 accuracy and per-instance MACs of a model, in one pass over an evaluation set.

The model is evaluated as it is: a gated model with its current (final) thresholds. There is no
"best over epochs": the numbers describe the one model that the checkpoint holds.

Under torchrun each process evaluates its part of the set (a sharded loader); counts and loss are
summed and the per-instance MACs and kept-channel sums gathered, so every process returns the
numbers of the whole set.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import distributed
from .errors import ManidpError
from .macs import MacMeter
from .models import ResNet
from .progress import progress


@torch.no_grad()
def evaluate(model: ResNet, loader, device: torch.device, count_macs: bool = True,
             input_size: int | None = None, amp: bool = False, channels_last: bool = False,
             desc: str = "eval", show_progress: bool = True, source: str = "the model") -> dict:
    """Return top-1/top-5 (%), mean CE, and (if ``count_macs``) the MAC summary of :class:`MacMeter`.

    A non-finite saliency, logit or loss raises :class:`ManidpError` naming ``source`` (e.g. the
    checkpoint): NaN saliencies close every gate, so the MAC reduction and top-1 would look like
    results while meaning nothing."""
    model.eval()
    meter = MacMeter(model, input_size) if count_macs else None
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    problem, gates = None, list(zip(model.gate_names(), model.gates()))
    k = min(5, model.num_classes)
    bar = progress(total=getattr(loader, "shard_samples", getattr(loader, "num_samples", None)), desc=desc,
                   disable=not show_progress)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, enabled=amp, dtype=_amp_dtype(device)):
            logits = model(x)
        logits = logits.float()
        loss = float(F.cross_entropy(logits, y, reduction="sum"))
        problem = problem or _nonfinite(gates, logits, loss, n)
        loss_sum += loss
        top = logits.topk(k, dim=1).indices
        hits = top.eq(y[:, None])
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(1).sum())
        n += y.numel()
        if meter is not None:
            meter.update(model, y.numel())
        bar.update(y.numel())
    bar.close()
    flagged = float(problem is not None)
    if distributed.size() > 1:        # every process stops together, or the others would wait
        flagged = distributed.sum_over_processes([flagged])[0]
    if flagged:
        raise ManidpError(f"{source}: {problem or 'a non-finite value on another process'} in the evaluation; "
                          f"no result is written: the weights overflow or are damaged, retrain it")
    if distributed.size() > 1:
        n, correct1, correct5, loss_sum = distributed.sum_over_processes([n, correct1, correct5, loss_sum])
        n, correct1, correct5 = int(n), int(correct1), int(correct5)
        if meter is not None:
            meter.per_instance = [distributed.all_gather_rows(meter.values())]
            meter.kept_sum = distributed.all_reduce_sum(meter.kept_sum)
    result = {"instances": n, "top1": 100.0 * correct1 / max(n, 1), "top5": 100.0 * correct5 / max(n, 1),
              "loss": loss_sum / max(n, 1)}
    if meter is not None:
        result["macs"] = meter.summary()
    return result


def _nonfinite(gates: list, logits: torch.Tensor, loss: float, seen: int) -> str | None:
    """What first holds a NaN or Inf in this batch (gate saliencies, logits, loss), or None.
    One host sync for the common, all-finite case."""
    where = f"from instance {seen + 1}"
    saliencies = [(name, g.saliency) for name, g in gates if getattr(g, "saliency", None) is not None]
    checks = [torch.isfinite(s).all() for _, s in saliencies] + [torch.isfinite(logits).all()]
    if bool(torch.stack(checks).all()) and math.isfinite(loss):
        return None
    for (name, _), ok in zip(saliencies, checks):
        if not bool(ok):
            return f"non-finite saliency of gate {name} {where}"
    if not bool(checks[-1]):
        return f"non-finite logits {where}"
    return f"non-finite loss ({loss}) {where}"


def _amp_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    # auto: bfloat16 on CPU (no GradScaler needed), float16 on CUDA; or --amp-dtype's choice.
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return getattr(torch, name)
