"""Remain-rate schedule and per-layer thresholds (reference section 3).

During training every gate sums its saliencies per channel. At the end of epoch ``e`` (0-based)
each gate's threshold becomes the k-th largest per-channel mean saliency of that epoch, with
k = ceil(r(e) * C_out), so on average a fraction r(e) of its channels stay open. r(e) decays from
about 1 to the target remain rate t along a half cosine and reaches t after the last epoch.
"""
from __future__ import annotations

import math

import torch

from . import distributed
from .errors import ManidpError
from .macs import kept_channels
from .models import ResNet


def remain_rate(epoch: int, epochs: int, target: float) -> float:
    """r(e) = (1 - t)/2 * cos(pi * (e + 1) / E) + (1 + t)/2; r(E - 1) = t."""
    check_remain_rate(target)
    return (1 - target) / 2 * math.cos(math.pi * (epoch + 1) / epochs) + (1 + target) / 2


def check_remain_rate(target: float, option: str = "--remain-rate") -> None:
    if not 0 < target <= 1:
        raise ManidpError(f"{option} {target} is outside (0, 1]: give the fraction of channels to keep, e.g. 0.6")


def kth_largest_threshold(mean_saliency: torch.Tensor, rate: float) -> torch.Tensor:
    """The k-th largest value of ``mean_saliency`` with k = ceil(rate * C) (at least 1)."""
    k = kept_channels(rate, mean_saliency.numel())
    return torch.topk(mean_saliency, k).values[-1]


@torch.no_grad()
def update_thresholds(model: ResNet, epoch: int, epochs: int, target: float,
                      means_out: list | None = None) -> float:
    """Set every gate's threshold from this epoch's saliency statistics; reset the statistics.

    Returns r(epoch); ``means_out``, if given, receives every gate's per-channel mean saliency (the
    statistics the thresholds came from, for ``calibrate.py``). Gates that saw no instance (count 0)
    keep their threshold. Under torchrun the
    sums and counts of all processes are added first, so every process sets the same thresholds from
    the whole epoch (the official code divides one GPU's sums by len(train_set) / n_gpu instead).
    """
    rate = remain_rate(epoch, epochs, target)
    sum_statistics(model)
    for gate in model.gates():
        if means_out is not None:
            means_out.append(gate.mean_saliency().clone())
        if int(gate.saliency_count) > 0:
            gate.threshold.copy_(kth_largest_threshold(gate.mean_saliency(), rate).to(gate.threshold))
        gate.reset_statistics()
    return rate


def reset_statistics(model: ResNet) -> None:
    for gate in model.gates():
        gate.reset_statistics()


@torch.no_grad()
def sum_statistics(model: ResNet) -> None:
    """Replace every gate's saliency sum and count by their sums over all processes (one
    all_reduce of a float64 vector; counts stay exact); nothing happens in a single process."""
    if distributed.size() == 1:
        return
    gates = model.gates()
    packed = torch.cat([t for g in gates for t in (g.saliency_sum, g.saliency_count.double().view(1))])
    packed = distributed.all_reduce_sum(packed)
    i = 0
    for g in gates:
        c = g.saliency_sum.numel()
        g.saliency_sum.copy_(packed[i:i + c])
        g.saliency_count.fill_(int(packed[i + c]))
        i += c + 1
