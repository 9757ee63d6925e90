"""ResNets for CIFAR (ResNet-20/32/56/110) and ImageNet (ResNet-18/34), plain or gated.

ImageNet models follow torchvision's layout and parameter names exactly, so torchvision's
``resnet18``/``resnet34`` state dicts load unchanged. CIFAR models are the three-stage ResNets of
He et al. (16/32/64 channels, 6n+2 layers) with 1x1-conv shortcuts without BN, as the official
ManiDP code builds them (reference section 2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ManidpError
from .blocks import BasicBlock, GatedBasicBlock
from .gate import Gate


@dataclass(frozen=True)
class ArchSpec:
    family: str                  # "cifar" or "imagenet"
    blocks: tuple[int, ...]      # basic blocks per stage
    widths: tuple[int, ...]      # channels per stage
    input_size: int              # default input resolution
    default_classes: int


ARCHS: dict[str, ArchSpec] = {
    "resnet20": ArchSpec("cifar", (3, 3, 3), (16, 32, 64), 32, 10),
    "resnet32": ArchSpec("cifar", (5, 5, 5), (16, 32, 64), 32, 10),
    "resnet56": ArchSpec("cifar", (9, 9, 9), (16, 32, 64), 32, 10),
    "resnet110": ArchSpec("cifar", (18, 18, 18), (16, 32, 64), 32, 10),
    "resnet18": ArchSpec("imagenet", (2, 2, 2, 2), (64, 128, 256, 512), 224, 1000),
    "resnet34": ArchSpec("imagenet", (3, 4, 6, 3), (64, 128, 256, 512), 224, 1000),
}


def arch_spec(arch: str) -> ArchSpec:
    if arch not in ARCHS:
        raise ManidpError(f"unknown architecture '{arch}' (option --arch): choose one of {', '.join(ARCHS)}")
    return ARCHS[arch]


class ResNet(nn.Module):
    """A ResNet of basic blocks; ``gated=True`` puts a ManiDP gate on both convs of every block."""

    def __init__(self, arch: str, num_classes: int | None = None, gated: bool = False,
                 **gate_options):
        super().__init__()
        spec = arch_spec(arch)
        self.arch, self.gated, self.spec = arch, gated, spec
        self.input_size = spec.input_size
        self.num_classes = num_classes or spec.default_classes
        imagenet = spec.family == "imagenet"
        c = spec.widths[0]
        if imagenet:
            self.conv1 = nn.Conv2d(3, c, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module | None = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(3, c, 3, stride=1, padding=1, bias=False)
            self.maxpool = None
        self.bn1 = nn.BatchNorm2d(c)
        self.stages = []
        c_in = c
        for i, (n, width) in enumerate(zip(spec.blocks, spec.widths)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                if gated:
                    block = GatedBasicBlock(c_in, width, stride if j == 0 else 1,
                                            shortcut_bn=imagenet, **gate_options)
                else:
                    block = BasicBlock(c_in, width, stride if j == 0 else 1, shortcut_bn=imagenet)
                blocks.append(block)
                c_in = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.stages.append(f"layer{i + 1}")
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, self.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation; gates keep their own (Gate.__init__).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def blocks(self) -> list[BasicBlock]:
        return [b for s in self.stages for b in getattr(self, s)]

    def gates(self) -> list[Gate]:
        """All gates in forward order (gate1, gate2 of each block)."""
        return [g for b in self.blocks() if isinstance(b, GatedBasicBlock) for g in (b.gate1, b.gate2)]

    def gate_names(self) -> list[str]:
        """Module names of :meth:`gates`, in the same order (any gate module, e.g. FBS's)."""
        names = {id(m): n for n, m in self.named_modules()}
        return [names[id(g)] for g in self.gates()]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.maxpool(x) if self.maxpool is not None else x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for s in self.stages:
            x = getattr(self, s)(x)
        return self.head(x)

    def thresholds(self) -> list[float]:
        """Per-layer thresholds of the ManiDP gates (empty for gates without one, e.g. FBS's top-k)."""
        return [float(g.threshold) for g in self.gates() if isinstance(g, Gate)]


def build_model(arch: str, num_classes: int | None = None, gated: bool = False,
                **gate_options) -> ResNet:
    """Build ``arch`` (see :data:`ARCHS`), plain or gated."""
    return ResNet(arch, num_classes=num_classes, gated=gated, **gate_options)
