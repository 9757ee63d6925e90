"""FPGM: Filter Pruning via Geometric Median (He, Liu, Wang, Hu, Yang, CVPR 2019), static.

FPGM prunes, in every pruned layer, the filters nearest the geometric median of the layer's filters:
those are the ones the others can best stand in for. It scores filter j by the sum of its
Euclidean distances to all filters of the layer and prunes the lowest scores (the paper's Eq. 6
with the candidate set restricted to the layer's own filters, as its code does). Pruning is soft,
as in SFP (He et al., IJCAI 2018): the selected filters are set to zero but keep training, so they
can grow back; the selection is redone before training and after every epoch with a constant
pruning rate. At the end the pruned filters are removed physically.

The recipe here, from the same dense baseline checkpoint, epochs, optimizer and learning rate as
every other method (``manidp prune --method fpgm``):

* layers: conv_a of every basic block (its output channels). conv_b's outputs are added to the
  residual stream, so a zeroed conv_b filter leaves a channel that cannot be removed; FPGM's own
  code zeroes filters in every conv and counts FLOPs as if they were gone. Pruning inside the block
  keeps every residual shape and yields a network that really is smaller.
* rate: one remain rate r for every block (FPGM and SFP use one rate for all pruned layers); block
  j keeps ceil(r C_j) filters. A target MAC reduction becomes r by bisection on the exact MACs of
  the narrowed network (``macs.inner_pruned_macs``).
* schedule: zero the selected filters before the first epoch and after every epoch (FPGM's
  ``epoch_prune = 1``), FPGM only (no norm-based share: the paper's "FPGM-only").
* end: the trained network's pruned filters are zero, but their BN still emits the constant
  ReLU(beta - gamma * mean / std) in eval mode (FPGM's code evaluates that masked network). Such a
  channel cannot be removed, so the network we measure (``deployable``) drops those channels
  entirely, BN included (``surgery.remove_dead_channels``): its accuracy and its MACs, counted by
  ``macs.dense_macs`` from its real shapes, describe the same smaller network.
"""
from __future__ import annotations

import torch

from ..macs import inner_pruned_macs, remain_rate_for_reduction
from ..models import ResNet
from .base import Method, kept_channels
from .surgery import remove_dead_channels


def geometric_median_order(weight: torch.Tensor) -> torch.Tensor:
    """Filter indices sorted by their summed Euclidean distance to all filters of the layer, ascending.

    ``weight``: (C_out, C_in, k, k). The first indices are nearest the layer's geometric median.
    Distances in float64, computed directly (not through the matmul expansion, which cancels).
    """
    w = weight.detach().flatten(1).double()
    dist = torch.cdist(w, w, compute_mode="donot_use_mm_for_euclid_dist")
    return dist.sum(1).argsort(stable=True)


def select_filters(weight: torch.Tensor, remain_rate: float) -> torch.Tensor:
    """Indices of the filters FPGM prunes at ``remain_rate``: C - ceil(r C) nearest the median."""
    c = weight.shape[0]
    return geometric_median_order(weight)[: c - kept_channels(remain_rate, c)]


@torch.no_grad()
def soft_prune(model: ResNet, remain_rate: float) -> int:
    """Zero the selected conv_a filters of every block (weights only, as SFP/FPGM); return how many."""
    total = 0
    for block in model.blocks():
        idx = select_filters(block.conv1.weight, remain_rate)
        block.conv1.weight[idx.to(block.conv1.weight.device)] = 0
        total += idx.numel()
    return total


def planned_widths(model: ResNet, remain_rate: float) -> list[int]:
    return [kept_channels(remain_rate, b.conv1.out_channels) for b in model.blocks()]


class FPGM(Method):
    name = "fpgm"
    prunes = True
    summary = "FPGM (He et al., CVPR 2019): soft filter pruning by geometric median, then physical removal"

    def target(self, model: ResNet, cfg) -> float:
        if cfg.remain_rate is not None:
            return cfg.remain_rate
        return remain_rate_for_reduction(
            model, cfg.target_reduction, model.input_size,
            cost=lambda r: inner_pruned_macs(model, planned_widths(model, r), model.input_size))

    def planned_macs(self, model: ResNet, rate: float) -> int:
        return inner_pruned_macs(model, planned_widths(model, rate), model.input_size)

    def begin(self, model: ResNet, cfg, target) -> None:
        soft_prune(model, target)

    def end_epoch(self, model: ResNet, epoch: int, cfg, target) -> dict:
        return {"pruned_filters": soft_prune(model, target), "conv_a_widths": planned_widths(model, target)}

    def deployable(self, model: ResNet) -> ResNet:
        return remove_dead_channels(model)
