"""Physical removal of pruned channels inside residual blocks (the last step of FPGM).

A channel of conv_a whose filter is all zero and whose BN scale and shift are zero outputs exactly
zero, so conv_b's weights on it add nothing: deleting the channel (conv_a's output filter, BN1's
entry and conv_b's input slice) does not change the block's output. The
result is a plain, physically narrower ResNet: ``macs.dense_macs`` of it counts the MACs it really
executes, from its real shapes.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ManidpError
from ..models import BasicBlock, GatedBasicBlock, ResNet


def dead_channels(block: BasicBlock) -> torch.Tensor:
    """Bool (C,): the conv_a output channels whose filter is exactly zero (soft-pruned)."""
    return block.conv1.weight.detach().flatten(1).eq(0).all(1)


@torch.no_grad()
def zero_channels(block: BasicBlock, channels: torch.Tensor) -> None:
    """Make conv_a's ``channels`` output exactly zero: filter, BN scale and BN shift set to 0."""
    block.conv1.weight[channels] = 0
    block.bn1.weight[channels] = 0
    block.bn1.bias[channels] = 0


def _narrow_conv(conv: nn.Conv2d, out_idx=None, in_idx=None) -> nn.Conv2d:
    w = conv.weight.detach()
    w = w if out_idx is None else w[out_idx]
    w = w if in_idx is None else w[:, in_idx]
    new = nn.Conv2d(w.shape[1], w.shape[0], conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, bias=conv.bias is not None).to(w.device, w.dtype)
    new.weight.copy_(w)
    if conv.bias is not None:
        new.bias.copy_(conv.bias.detach() if out_idx is None else conv.bias.detach()[out_idx])
    return new.train(conv.training)


def _narrow_bn(bn: nn.BatchNorm2d, idx) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(idx), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats).to(bn.weight.device)
    if bn.affine:
        new.weight.copy_(bn.weight.detach()[idx])
        new.bias.copy_(bn.bias.detach()[idx])
    if bn.track_running_stats:
        new.running_mean.copy_(bn.running_mean[idx])
        new.running_var.copy_(bn.running_var[idx])
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)


@torch.no_grad()
def remove_dead_channels(model: ResNet) -> ResNet:
    """A copy of the plain ``model`` with every conv_a channel whose filter is zero removed.

    In eval mode its outputs equal those of ``model`` after :func:`zero_channels` of those channels
    (tested). A block whose filters are all zero keeps one zeroed channel (a convolution needs one).
    """
    if any(isinstance(b, GatedBasicBlock) for b in model.blocks()):
        raise ManidpError("physical channel removal applies to a plain (static) network, not a gated one")
    pruned = copy.deepcopy(model)
    for block in pruned.blocks():
        dead = dead_channels(block)
        if not dead.any():
            continue
        keep = (~dead).nonzero().flatten()
        if keep.numel() == 0:          # a convolution needs one channel: keep channel 0, exactly zero
            keep = torch.zeros(1, dtype=torch.long, device=dead.device)
            zero_channels(block, keep)
        block.conv1 = _narrow_conv(block.conv1, out_idx=keep)
        block.bn1 = _narrow_bn(block.bn1, keep)
        block.conv2 = _narrow_conv(block.conv2, in_idx=keep)
    return pruned


def conv_a_widths(model: ResNet) -> list[int]:
    """Output channels of every block's conv_a (the narrowed width after removal)."""
    return [b.conv1.out_channels for b in model.blocks()]
