"""MAC calibration of ManiDP's thresholds: the mean per-instance MACs on target (docs/fidelity.md).

The official rule (``schedule.update_thresholds``) sets each gate's threshold to the k-th largest
epoch-mean saliency, k = ceil(r * C). That fixes the rank of the mean saliency, not the MACs an
instance costs: instances keep more or fewer than k channels, and layers differ in cost, so runs
ended 4-15 percentage points away from the MAC reduction they were given.

Calibration keeps the rule's shape (every gate ranks its channels by epoch-mean saliency, one
threshold per layer) and moves all gates together: the threshold of gate l sits at rank position
s * k_l in its sorted channel means, interpolated between adjacent means, and one scale s is
searched until the mean backbone MACs of a fixed sample of training instances (eval mode, the
network's own masks) equal the target (searched by safeguarded false position). s = 1 is the
official threshold. Off with ``--no-calibrate-macs``. The sample is training rows that
``--limit-train`` left out where there are any: training instances themselves have been made sparser
by the sparsity loss than unseen ones.

Also here, the other two steps that put a finished network on its final masks: the on-target check
(:func:`mac_target`) and BatchNorm re-estimation at the final masks (:func:`reestimate_batchnorm`).
"""
from __future__ import annotations

import math

import torch

from . import distributed
from .macs import InstanceCounter, kept_channels, kept_counts
from .models import ResNet
from .models.gate import Gate
from .schedule import reset_statistics
from .tolerance import MAC_TOLERANCE_PT as TOLERANCE_PT

STEPS = 30              # at most this many search steps on the scale s (about 5-10 are used)


def rank_threshold(sorted_means: torch.Tensor, position: float) -> torch.Tensor:
    """Threshold at a fractional rank ``position`` in [1, C] of descending channel means.

    An integer position k gives the k-th largest mean (the official rule); between k and k + 1
    the threshold moves linearly from the k-th to the (k+1)-th mean.
    """
    c = sorted_means.numel()
    p = min(max(position, 1.0), float(c))
    j = int(math.floor(p))
    frac = p - j
    if j >= c or frac == 0.0:
        return sorted_means[j - 1]
    return sorted_means[j - 1] + frac * (sorted_means[j] - sorted_means[j - 1])


class Calibrator:
    """Searches the rank scale s of every gate's threshold until mean backbone MACs hit a target.

    ``means``: per-gate channel-mean saliencies (the statistics the official rule reads);
    ``rate``: the remain rate r whose k = ceil(r * C) the official rule uses.
    """

    def __init__(self, model: ResNet, batches: list[torch.Tensor], means: list[torch.Tensor], rate: float,
                 input_size: int | None = None):
        self.model, self.batches, self.rate = model, batches, rate
        self.gates = [g for g in model.gates() if isinstance(g, Gate)]
        self.sorted = [m.sort(descending=True).values for m in means]
        self.k = [kept_channels(rate, g.c_out) for g in self.gates]
        self.counter = InstanceCounter(model, input_size)

    def set_scale(self, s: float) -> None:
        for g, means, k in zip(self.gates, self.sorted, self.k):
            g.threshold.copy_(rank_threshold(means, s * k).to(g.threshold))

    @torch.no_grad()
    def mean_macs(self, s: float) -> float:
        """Mean backbone MACs of the sample at scale s (over all processes under torchrun)."""
        self.set_scale(s)
        was = self.model.training
        self.model.eval()
        total, n = 0.0, 0
        for x in self.batches:
            self.model(x)
            total += float(self.counter.count(kept_counts(self.model)).double().sum())
            n += x.shape[0]
        self.model.train(was)
        total, n = distributed.sum_over_processes([total, n])
        return total / max(n, 1)

    def run(self, target_macs: float) -> dict:
        """Set the thresholds at the scale whose mean MACs are nearest ``target_macs``; return a record.

        A larger s puts every threshold at a later rank (a lower mean saliency), so mean MACs rise
        with s. The search is safeguarded false position on [lo, hi] (each new point at
        least 10% of the bracket from either end), which needs about half the forward passes of
        bisection on these nearly linear curves, and stops within 0.05 pp.
        """
        official = self.mean_macs(1.0)
        if official > target_macs:      # too many MACs: search down to one channel per gate
            lo, hi = 1.0 / max(self.k), 1.0
            m_lo, m_hi = self.mean_macs(lo), official
        else:                           # too few: search up to every threshold at the lowest mean
            lo, hi = 1.0, max(g.c_out / k for g, k in zip(self.gates, self.k))
            m_lo, m_hi = official, self.mean_macs(hi)
        best = min((abs(m - target_macs), s, m) for s, m in ((lo, m_lo), (hi, m_hi)))
        for _ in range(STEPS):
            if m_lo > target_macs or m_hi < target_macs or best[0] <= 5e-4 * self.counter.dense:
                break            # target outside what scaling reaches, or within 0.05 pp
            frac = (target_macs - m_lo) / (m_hi - m_lo) if m_hi > m_lo else 0.5
            mid = lo + min(max(frac, 0.1), 0.9) * (hi - lo)
            m = self.mean_macs(mid)
            best = min(best, (abs(m - target_macs), mid, m))
            if m > target_macs:
                hi, m_hi = mid, m
            else:
                lo, m_lo = mid, m
        _, scale, macs = best
        self.set_scale(scale)
        dense = self.counter.dense
        return {"scale": scale, "rate": self.rate, "instances": int(sum(b.shape[0] for b in self.batches)),
                "official_reduction_pct": 100.0 * (1 - official / dense),
                "calibrated_reduction_pct": 100.0 * (1 - macs / dense),
                "target_reduction_pct": 100.0 * (1 - target_macs / dense)}


def first_batches(loader, instances: int, epoch: int):
    """Yield the input batches of ``loader``'s epoch ``epoch`` (its shuffle and augmentation) until
    ``instances`` are seen over all processes (under torchrun each process yields its shard's part)."""
    loader.set_epoch(epoch)
    n = 0
    for x, _ in loader:
        yield x
        n += x.shape[0]
        if n >= instances // distributed.size():
            return


def sample_batches(loader, instances: int, epoch: int = 0) -> list[torch.Tensor]:
    """:func:`first_batches` kept in memory, so every search step sees the same instances."""
    return list(first_batches(loader, instances, epoch))


def calibrate(model: ResNet, loader, means: list[torch.Tensor], rate: float, target_macs: float,
              instances: int, input_size: int | None = None, epoch: int = 0) -> dict:
    """Calibrate ``model``'s thresholds in place (see the module docstring); return the record that
    goes into the epoch's history."""
    batches = sample_batches(loader, instances, epoch)
    return Calibrator(model, batches, means, rate, input_size).run(target_macs)


def mac_target(realized_pct: float, target_pct: float) -> dict:
    """The run's MAC reduction against its target: miss in pp and whether it is within TOLERANCE_PT."""
    miss = realized_pct - target_pct
    return {"target_reduction_pct": target_pct, "reduction_miss_pt": miss, "on_target": abs(miss) <= TOLERANCE_PT}


@torch.no_grad()
def reestimate_batchnorm(model: ResNet, loader, instances: int, epoch: int, channels_last: bool = False) -> dict:
    """Recompute every BatchNorm's running mean and variance as the plain average over ``instances``
    training instances of the network with its final masks (train-mode forward, no step): the
    statistics were collected under the masks of earlier thresholds. ``epoch`` picks the loader's
    shuffle and augmentation. Gate statistics are reset afterwards."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                    # cumulative average over the batches below
    model.train()
    n = 0
    for x in first_batches(loader, instances, epoch):
        model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
        n += x.shape[0]
    for m, mom in zip(bns, saved):
        m.momentum = mom
    reset_statistics(model)
    return {"instances": int(distributed.sum_over_processes([n])[0])}
