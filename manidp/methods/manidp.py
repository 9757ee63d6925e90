"""ManiDP (Tang et al., CVPR 2021) as a registry entry.

Its training-loop steps (reference loss of the complexity weight, the two regularisers of
``manidp/losses.py``, per-layer thresholds from the cosine remain-rate schedule) predate the
registry and stay in ``manidp/train.py``; this entry builds its network and turns a MAC target into
its remain rate. The ablations of issue 5 are options of this one method (``LossOptions``):

=====================================  ==========================================================
ablation                               options
=====================================  ==========================================================
without the similarity loss            ``--lambda-sim 0`` (lambda_2 = 0)
without the complexity weighting       ``--no-complexity-weighting`` (w_i = 1)
without both (plain dynamic pruning    ``--lambda-sim 0 --no-complexity-weighting``: the gated
with an L1 penalty)                    network with the mean-saliency L1 penalty only
complexity weight not detached         ``--no-detach-weight`` (the official code's behaviour)
=====================================  ==========================================================
"""
from __future__ import annotations

from ..macs import remain_rate_for_reduction
from ..models import ResNet, build_model
from .base import Method


class ManiDP(Method):
    name = "manidp"
    prunes = True
    summary = "ManiDP: gates with per-layer thresholds, complexity-weighted sparsity and similarity losses"

    def validate(self, cfg) -> None:
        super().validate(cfg)
        cfg.losses.validate()

    def build(self, arch: str, num_classes: int | None, gate_init: str = "zero") -> ResNet:
        return build_model(arch, num_classes=num_classes, gated=True, fc2_init=gate_init)

    def target(self, model: ResNet, cfg) -> float:
        if cfg.remain_rate is not None:
            return cfg.remain_rate
        return remain_rate_for_reduction(model, cfg.target_reduction, model.input_size)
