"""FBS: Feature Boosting and Suppression (Gao, Zhao, Dudziak, Mullins, Xu, "Dynamic Channel Pruning:
Feature Boosting and Suppression", ICLR 2019), dynamic.

Per gated convolution, a saliency predictor reads the pooled input of the convolution,
g(x) = ReLU(ss(x) W + b), and a winner-take-all keeps, for every instance, the k = ceil(d C) channels
of largest saliency (d: the density; our remain rate). Kept channels are scaled by their saliency
("boosting"), the others are zero ("suppression") and their computation can be skipped. Training
adds a lasso on the saliencies: L = mean_i CE_i + lambda * sum_l mean_i ||g_l(x_i)||_1.

How it maps onto this project, and why:

* Same gated ResNet as ManiDP (``models/blocks.py``): both convolutions of every basic block are
  gated, gate 1 from the block input, gate 2 from the masked conv_a output; the mask multiplies
  conv_a after BN and ReLU and conv_b after BN, before the residual add. FBS writes the gated
  layer as ReLU(pi * (norm(conv(x)) + beta)); with pi >= 0 that is pi * ReLU(norm + beta), i.e. ours
  with BN's scale kept, so a dense baseline loads unchanged and density 1 with saliency 1
  reproduces it.
* ``ss``: FBS reduces each channel to its mean absolute value; every gate here reads a post-ReLU map,
  so that is the global average pool ManiDP's gates use.
* Predictor: one FC layer with bias, then ReLU (FBS), not ManiDP's two FC layers; no clamp.
  Bias 1 and zero weights by default (FBS's code: bias 1, weights N(0, 0.01)), so every gate starts
  at saliency 1 and the gated network computes its baseline; ``--gate-init kaiming`` draws the
  weights Kaiming-normal.
* Winner-take-all per instance by ``topk`` over the detached saliencies: exactly k channels are
  kept for every instance (ties broken by ``topk``), so the MACs of every instance are the same,
  ``macs.uniform_keep_macs(model, d)``; the gradient reaches only the kept saliencies, as in FBS.
* Density: a target MAC reduction becomes d with ``macs.remain_rate_for_reduction`` (every gate
  keeps ceil(d C)). FBS's authors fine-tune at density 1 and then lower it step by step; we lower
  it once per epoch along ManiDP's cosine remain-rate curve, d(e) = r(e) of ``schedule.remain_rate``,
  so the last epoch trains at the target d and both methods prune at the same pace and budget.
  With a MAC target, the last epoch keeps the per-gate k of ``macs.keep_plan`` instead (set as each
  gate's density k / C): a uniform k = ceil(d C) missed 54.2% by 1.6 pp on ResNet-20.
* Lasso weight lambda: ``--lambda-l1``, default 1e-8 (the FBS paper's value as we recall it: not
  checked against the paper's text in this project; their public configs switch it off), on every saliency of
  every gate (the paper's formula; FBS's TensorFlow code penalises only the kept ones).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ManidpError
from ..macs import keep_plan, remain_rate_for_reduction
from ..models import ResNet, build_model
from ..models.gate import global_pool, init_saliency_fc
from ..schedule import remain_rate
from .base import Method, kept_channels

LAMBDA_L1 = 1e-8


class FbsGate(nn.Module):
    """FBS saliency predictor and winner-take-all for one gated convolution.

    Same interface as :class:`~manidp.models.Gate` where the rest of the project reads it: after
    every forward ``saliency`` (B, C_out) and ``keep`` (B, C_out, bool) hold this batch's values,
    ``feature`` is filled in by the block, ``c_in``/``c_out``/``macs`` describe its size. There is no
    threshold: the buffer ``density`` sets how many channels every instance keeps.
    """

    def __init__(self, c_in: int, c_out: int, fc_init: str = "zero", density: float = 1.0):
        super().__init__()
        self.c_in, self.c_out = c_in, c_out
        self.fc = nn.Linear(c_in, c_out, bias=True)
        init_saliency_fc(self.fc, fc_init)
        self.register_buffer("density", torch.tensor(float(density), dtype=torch.float64))
        self.saliency: torch.Tensor | None = None
        self.keep: torch.Tensor | None = None
        self.feature: torch.Tensor | None = None
        # the epoch's k as a plain int while manidp/fast_step.py trains (reading density is a host sync)
        self.k_static: int | None = None

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the predictor's FC layer, per instance."""
        return self.c_in * self.c_out

    @property
    def k(self) -> int:
        return kept_channels(float(self.density), self.c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mask wta_k(g(x)): the saliency on the k largest channels of each instance, 0 elsewhere."""
        pooled = global_pool(x) if x.dim() == 4 else x
        g = F.relu(self.fc(pooled))
        k = self.k if self.k_static is None else self.k_static
        if k >= self.c_out:
            keep = torch.ones_like(g, dtype=torch.bool)
        else:
            top = g.detach().topk(k, dim=1).indices
            keep = torch.zeros_like(g, dtype=torch.bool).scatter_(1, top, True)
        self.saliency, self.keep = g, keep
        return g * keep

    def reset_statistics(self) -> None:
        """No epoch statistics: FBS has no thresholds to set (called by the training loop for every gate)."""

    def extra_repr(self) -> str:
        return f"{self.c_in} -> {self.c_out}, density={float(self.density):.4f}"


def fbs_gates(model: ResNet) -> list[FbsGate]:
    return [g for g in model.gates() if isinstance(g, FbsGate)]


def set_density(model: ResNet, density: float) -> None:
    for g in fbs_gates(model):
        g.density.fill_(density)


def l1_penalty(model: ResNet) -> torch.Tensor:
    """sum over gates of mean_i ||g(x_i)||_1 (saliencies are >= 0, so the L1 norm is their sum)."""
    return sum(g.saliency.float().sum(1).mean() for g in fbs_gates(model))


class FBS(Method):
    name = "fbs"
    prunes = True
    summary = "FBS (Gao et al., ICLR 2019): per-instance top-k channels from a saliency predictor, L1 on saliency"

    def add_arguments(self, group) -> None:
        group.add_argument("--lambda-l1", type=float, default=None,
                           help=f"FBS only: weight of the L1 penalty on the saliencies (default: {LAMBDA_L1}, "
                                f"the FBS paper's value); the density is --remain-rate or comes from --target-reduction")

    def options_from_args(self, args) -> dict:
        value = getattr(args, "lambda_l1", None)
        return {} if value is None else {"lambda_l1": value}

    def default_options(self) -> dict:
        return {"lambda_l1": LAMBDA_L1}

    def validate(self, cfg) -> None:
        super().validate(cfg)
        lam = self.options(cfg)["lambda_l1"]
        if not (isinstance(lam, (int, float)) and 0 <= lam < float("inf")):
            raise ManidpError(f"--lambda-l1 {lam} must be a finite number >= 0")

    def build(self, arch: str, num_classes: int | None, gate_init: str = "zero") -> ResNet:
        model = build_model(arch, num_classes=num_classes, gated=True)
        for block in model.blocks():
            block.gate1 = FbsGate(block.gate1.c_in, block.gate1.c_out, gate_init)
            block.gate2 = FbsGate(block.gate2.c_in, block.gate2.c_out, gate_init)
        return model

    def target(self, model: ResNet, cfg) -> float:
        if cfg.remain_rate is not None:
            return cfg.remain_rate
        return remain_rate_for_reduction(model, cfg.target_reduction, model.input_size)

    def start_epoch(self, model: ResNet, epoch: int, cfg, target) -> dict:
        density = remain_rate(epoch, cfg.epochs, target)
        set_density(model, density)
        if epoch == cfg.epochs - 1 and cfg.target_reduction is not None:
            # the last epoch at the target: per-gate k nearest the MAC target (macs.keep_plan), each set as
            # the gate's density k / C, so the final network is on target within a fraction of a pp
            for g, k in zip(fbs_gates(model), keep_plan(model, cfg.target_reduction, model.input_size)):
                g.density.fill_(k / g.c_out)
            return {"density": density, "kept_channels": [g.k for g in fbs_gates(model)]}
        return {"density": density}

    def loss(self, model: ResNet, logits: torch.Tensor, targets: torch.Tensor, cfg):
        ce = F.cross_entropy(logits.float(), targets, reduction="none")
        lam = self.options(cfg)["lambda_l1"]
        l1 = l1_penalty(model) if lam else logits.new_zeros((), dtype=torch.float32)
        return ce.mean() + lam * l1, {"ce": ce.detach(), "sparse": l1.detach()}
