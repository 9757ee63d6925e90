"""Plain and gated ResNets, and loading dense checkpoints into them."""
from .blocks import BasicBlock, GatedBasicBlock
from .gate import Gate
from .loading import load_dense_state_dict
from .resnet import ARCHS, ArchSpec, ResNet, arch_spec, build_model

__all__ = ["ARCHS", "ArchSpec", "BasicBlock", "Gate", "GatedBasicBlock", "ResNet",
           "arch_spec", "build_model", "load_dense_state_dict"]
