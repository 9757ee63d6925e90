"""Top-1/top-5 accuracy and per-instance MACs of a model, in one pass over an evaluation set.

The model is evaluated as it is: a gated model with its current (final) thresholds. There is no
"best over epochs": the numbers describe the one model that the checkpoint holds.

Under torchrun each process evaluates its part of the set (a sharded loader); counts and loss are
summed and the per-instance MACs and kept-channel sums gathered, so every process returns the
numbers of the whole set.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import distributed
from .macs import MacMeter
from .models import ResNet
from .progress import progress


@torch.no_grad()
def evaluate(model: ResNet, loader, device: torch.device, count_macs: bool = True,
             input_size: int | None = None, amp: bool = False, channels_last: bool = False,
             desc: str = "eval", show_progress: bool = True) -> dict:
    """Return top-1/top-5 (%), mean CE, and (if ``count_macs``) the MAC summary of :class:`MacMeter`."""
    model.eval()
    meter = MacMeter(model, input_size) if count_macs else None
    n = correct1 = correct5 = 0
    loss_sum = 0.0
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
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        top = logits.topk(k, dim=1).indices
        hits = top.eq(y[:, None])
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(1).sum())
        n += y.numel()
        if meter is not None:
            meter.update(model, y.numel())
        bar.update(y.numel())
    bar.close()
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


def _amp_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    # auto: bfloat16 on CPU (no GradScaler needed), float16 on CUDA; or --amp-dtype's choice.
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return getattr(torch, name)
