"""The two ManiDP regularisers and the full objective (reference sections 4-6).

    L = mean_i CE_i + lambda_1 * L_sparse + lambda_2 * L_sim

L_sparse weights each instance's saliency by how easy it is (recognition complexity); L_sim aligns
the instance-to-instance similarity of the features with that of the sub-networks (saliencies).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import ManidpError
from .models import ResNet

# Official-code defaults (reference section 6); each is an option of LossOptions.
COMPLEXITY_SCALE = 0.5     # C = 0.5 * previous-epoch mean CE
GAMMA = 1.0
WEIGHT_FLOOR = 1e-10


@dataclass
class LossOptions:
    """ManiDP loss constants. Defaults are the official code's, except ``detach_weight``.

    lambda_sparse: lambda_1, weight of the complexity-weighted sparsity loss (code default 0.1).
    lambda_sim: lambda_2, weight of the similarity alignment loss (code default 0.1).
    gamma: exponent of the complexity weight (1).
    complexity_scale: C = complexity_scale * previous-epoch mean CE (0.5).
    detach_weight: the official code lets gradient flow through w_i into the CE of easy instances,
        which pushes their loss up (a plausible source of the NaN losses its users report). We detach
        by default: the paper describes w_i as a weight, not as a training signal, and a weight that
        rewards higher CE contradicts the objective. ``detach_weight=False`` restores the official
        behaviour exactly.
    complexity_weighting: False sets w_i = 1 (ablation).
    detach_features: beyond the paper, off by default: the similarity loss treats the features'
        similarities as a fixed target and trains only the gates towards them. The paper and the
        official code detach nothing, so the loss also pulls the features of different instances
        together; with zero-initialised gates (every saliency 1, so R is all ones) that pull at
        lambda_2 = 1 raised the training CE of an all-open epoch from 1.6 to 16 (docs/fidelity.md).
    """
    lambda_sparse: float = 0.1
    lambda_sim: float = 0.1
    gamma: float = GAMMA
    complexity_scale: float = COMPLEXITY_SCALE
    detach_weight: bool = True
    complexity_weighting: bool = True
    detach_features: bool = False

    def validate(self) -> None:
        for name in ("lambda_sparse", "lambda_sim", "gamma", "complexity_scale"):
            value = getattr(self, name)
            if not (value >= 0 and value < float("inf")):
                raise ManidpError(f"--{name.replace('_', '-')} {value} must be a finite number >= 0")


def complexity_weights(ce: torch.Tensor, reference_loss: float | torch.Tensor, gamma: float = GAMMA,
                       scale: float = COMPLEXITY_SCALE, detach: bool = True) -> torch.Tensor:
    """w_i = 1[CE_i < C] * max((C - CE_i) / C, 1e-10) ** gamma with C = scale * reference_loss.

    Easy instances (small CE) get weights near 1; instances with CE >= C get 0, so hard instances
    feel no sparsity pressure.
    """
    c = scale * reference_loss
    ce = ce.detach() if detach else ce
    if isinstance(c, torch.Tensor):   # a device tensor (manidp/fast_step.py): no host branch on its value
        positive = c > 0
        c = torch.where(positive, c, torch.ones_like(c))
        w = ((c - ce) / c).clamp(min=WEIGHT_FLOOR) ** gamma
        return w * ((ce < c) & positive).to(w.dtype)
    if c <= 0:
        return torch.zeros_like(ce)
    w = ((c - ce) / c).clamp(min=WEIGHT_FLOOR) ** gamma
    return w * (ce < c).to(w.dtype)


def sparsity_loss(model: ResNet, weights: torch.Tensor) -> torch.Tensor:
    """sum over gates of mean_i(w_i * mean_c pi_c(x_i)), as one (B, gates) product: a handful of
    kernels instead of a few per gate (on a GPU a small step is bound by kernel launches)."""
    means = torch.stack([g.saliency.mean(1) for g in model.gates()], dim=1)
    return (weights.unsqueeze(1) * means).sum(1).mean()


def similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) cosine similarities of the rows."""
    x = F.normalize(x, dim=1)
    return x @ x.t()


def alignment_loss(features: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    """||T - R||_F^2 / B^2 for one gate (T from features, R from saliencies)."""
    b = features.shape[0]
    return (similarity_matrix(features) - similarity_matrix(saliency)).pow(2).sum() / (b * b)


def grouped_alignment_loss(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """sum of :func:`alignment_loss` over (features, saliency) pairs, batched: pairs of the same
    widths (the gates of one stage) go through one normalise and two batched matrix products.
    Equal to the per-gate sum (tests/test_losses.py); a ResNet-20 step launches ~6x fewer kernels."""
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i, (f, s) in enumerate(pairs):
        groups.setdefault((f.shape[0], f.shape[1], s.shape[1]), []).append(i)
    total = None
    for idx in groups.values():
        f = F.normalize(torch.stack([pairs[i][0] for i in idx]), dim=2)     # (G, B, D_f)
        s = F.normalize(torch.stack([pairs[i][1] for i in idx]), dim=2)     # (G, B, D_s)
        b = f.shape[1]
        part = (f @ f.transpose(1, 2) - s @ s.transpose(1, 2)).pow(2).sum() / (b * b)
        total = part if total is None else total + part
    return total


def similarity_loss(model: ResNet, detach_features: bool = False) -> torch.Tensor:
    """sum over gates of the alignment loss; nothing is detached (reference section 5) unless
    ``detach_features`` (LossOptions)."""
    return grouped_alignment_loss([(g.feature.detach() if detach_features else g.feature, g.saliency)
                                   for g in model.gates()])


def loss_terms(model: ResNet, logits: torch.Tensor, targets: torch.Tensor, reference_loss: float,
               opts: LossOptions, similarity=None) -> dict[str, torch.Tensor]:
    """The objective's terms for the model's last forward pass: per-instance CE and complexity weight,
    the sparsity loss and the similarity loss (``similarity(model)``; zero where its lambda is 0)."""
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    if opts.complexity_weighting:
        w = complexity_weights(ce, reference_loss, opts.gamma, opts.complexity_scale, opts.detach_weight)
    else:
        w = torch.ones_like(ce)
    zero = logits.new_zeros(())
    sparse = sparsity_loss(model, w) if opts.lambda_sparse else zero
    if similarity is None:
        similarity = lambda m: similarity_loss(m, opts.detach_features)  # noqa: E731
    sim = similarity(model) if opts.lambda_sim else zero
    return {"ce": ce, "weight": w, "sparse": sparse, "sim": sim}


def detached(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in terms.items()}


def manidp_loss(model: ResNet, logits: torch.Tensor, targets: torch.Tensor,
                reference_loss: float, opts: LossOptions) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The full objective for the batch of the model's last forward pass.

    Returns the loss and its parts (per-instance CE included, for the next epoch's reference loss).
    """
    t = loss_terms(model, logits, targets, reference_loss, opts)
    loss = t["ce"].mean() + opts.lambda_sparse * t["sparse"] + opts.lambda_sim * t["sim"]
    return loss, detached(t)
