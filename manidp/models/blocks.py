"""Basic residual blocks, plain and gated (reference section 2).

Both blocks share parameter names with torchvision's ``BasicBlock`` (conv1, bn1, conv2, bn2,
downsample.0/.1) so a dense checkpoint loads into the gated model; the gated block only adds
``gate1`` and ``gate2``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .gate import Gate, mask_and_pool


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv_a -> BN -> ReLU -> conv_b -> BN, plus the shortcut, then ReLU.

    ``shortcut_bn`` picks the projection shortcut: 1x1 conv + BN (torchvision, ImageNet) or a bare
    1x1 conv (the official CIFAR code's option B, no BN).
    """

    def __init__(self, c_in: int, planes: int, stride: int = 1, shortcut_bn: bool = True):
        super().__init__()
        self.conv1 = conv3x3(c_in, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != planes:
            layers = [nn.Conv2d(c_in, planes, 1, stride=stride, bias=False)]
            if shortcut_bn:
                layers.append(nn.BatchNorm2d(planes))
            self.downsample = nn.Sequential(*layers)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class GatedBasicBlock(BasicBlock):
    """A basic block whose two convolutions are each controlled by a ManiDP gate.

    Gate 1 reads the block input and masks the channels of conv_a (after BN and ReLU); gate 2 reads
    that already-masked tensor and masks the channels of conv_b (after BN, before the residual add).
    Each gate's ``feature`` is the pooled output of its convolution before masking, which the
    similarity loss compares with the gate's saliency (reference section 5).

    Gate 2 pools the masked conv_a output; since the mask is constant over H and W, that pooled map
    is gate 1's feature times m1, so it costs no second pass over the tensor.
    """

    def __init__(self, c_in: int, planes: int, stride: int = 1, shortcut_bn: bool = True,
                 **gate_options):
        super().__init__(c_in, planes, stride, shortcut_bn)
        self.gate1 = Gate(c_in, planes, **gate_options)
        self.gate2 = Gate(planes, planes, **gate_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m1 = self.gate1(x)
        out, self.gate1.feature = mask_and_pool(F.relu(self.bn1(self.conv1(x))), m1)
        m2 = self.gate2(self.gate1.feature * m1)
        out, self.gate2.feature = mask_and_pool(self.bn2(self.conv2(out)), m2)
        return F.relu(out + self.shortcut(x))
