"""Per-gate training statistics for ``history.jsonl``: how dynamic the gates really are (issue 14).

Accumulated over one training epoch from every gate's ``saliency`` and ``keep`` of each step (any
method whose gates expose them: ManiDP, FBS), summarised per gate at the epoch's end:

``saliency_mean``        mean saliency over instances and channels
``between_channel_std``  std across channels of the per-channel mean saliency (static structure)
``within_channel_std``   mean over channels of each channel's std across instances (how much the
                         gate's decision depends on the instance; near 0: the gate is static)
``kept_min/mean/max``    the fraction of channels an instance keeps: smallest, mean, largest
``kept_saliency_mean``   mean saliency of the kept channels: the scale the next layer's BN sees
                         (the dense baseline's BN was trained at scale 1)
``threshold``            the threshold the epoch trained with (ManiDP gates)

Under torchrun the sums are added and the extremes taken over all processes.
"""
from __future__ import annotations

import math

import torch

from . import distributed
from .models import ResNet
from .models.gate import Gate


class GateStats:
    """The accumulators live on the model's device and are read once, by :meth:`summary`: a training
    step adds a few reductions per gate and never waits for the device."""

    def __init__(self, model: ResNet):
        gates = model.gates()
        self.names = model.gate_names()
        self.thresholds = [float(g.threshold) if isinstance(g, Gate) else None for g in gates]
        dev = next(model.parameters()).device
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=dev)  # noqa: E731
        self.sum = [zeros(g.c_out) for g in gates]
        self.sq = [zeros(g.c_out) for g in gates]
        self.kept_sal, self.kept_n, self.frac_sum = zeros(len(gates)), zeros(len(gates)), zeros(len(gates))
        self.frac_min = torch.full((len(gates),), math.inf, dtype=torch.float64, device=dev)
        self.frac_max = torch.full((len(gates),), -math.inf, dtype=torch.float64, device=dev)
        self.n = 0

    @torch.no_grad()
    def reset(self, model: ResNet) -> None:
        """Start a new epoch in the same tensors (a captured CUDA graph writes to them: fast_step.py)."""
        self.thresholds = [float(g.threshold) if isinstance(g, Gate) else None for g in model.gates()]
        for t in (*self.sum, *self.sq, self.kept_sal, self.kept_n, self.frac_sum):
            t.zero_()
        self.frac_min.fill_(math.inf)
        self.frac_max.fill_(-math.inf)
        self.n = 0

    @torch.no_grad()
    def update(self, model: ResNet) -> None:
        self.accumulate(model)
        gates = model.gates()
        if gates:
            self.n += gates[0].saliency.shape[0]

    @torch.no_grad()
    def accumulate(self, model: ResNet) -> None:
        """The device part of :meth:`update`: everything but the instance count."""
        for i, g in enumerate(model.gates()):
            s = g.saliency.detach().double()
            keep = g.keep.detach()
            self.sum[i] += s.sum(0)
            self.sq[i] += (s * s).sum(0)
            self.kept_sal[i] += (s * keep).sum()
            self.kept_n[i] += keep.sum()
            frac = keep.double().mean(1)
            self.frac_sum[i] += frac.sum()
            self.frac_min[i] = torch.minimum(self.frac_min[i], frac.min())
            self.frac_max[i] = torch.maximum(self.frac_max[i], frac.max())

    def _reduce(self) -> None:
        if distributed.size() == 1:
            return
        self.sum = [distributed.all_reduce_sum(t) for t in self.sum]
        self.sq = [distributed.all_reduce_sum(t) for t in self.sq]
        self.kept_sal, self.kept_n, self.frac_sum = (distributed.all_reduce_sum(t) for t in
                                                     (self.kept_sal, self.kept_n, self.frac_sum))
        ext = distributed.all_gather_rows(torch.stack([self.frac_min, -self.frac_max]).unsqueeze(0))
        self.frac_min, self.frac_max = ext[:, 0].min(0).values, -ext[:, 1].min(0).values
        self.n = int(distributed.sum_over_processes([self.n])[0])

    def summary(self) -> list[dict]:
        """One record per gate (see the module docstring); empty when no step was seen."""
        self._reduce()
        if self.n == 0:
            return []
        # host copies, read once; the device tensors stay where a captured step writes them
        sums, sqs = [t.cpu() for t in self.sum], [t.cpu() for t in self.sq]
        kept_sal, kept_n, frac_sum, frac_min, frac_max = (
            t.cpu() for t in (self.kept_sal, self.kept_n, self.frac_sum, self.frac_min, self.frac_max))
        out = []
        for i, name in enumerate(self.names):
            mean_c = sums[i] / self.n
            var_c = (sqs[i] / self.n - mean_c * mean_c).clamp(min=0)
            out.append({
                "gate": name,
                "saliency_mean": float(mean_c.mean()),
                "between_channel_std": float(mean_c.std(unbiased=False)),
                "within_channel_std": float(var_c.sqrt().mean()),
                "kept_min": float(frac_min[i]),
                "kept_mean": float(frac_sum[i] / self.n),
                "kept_max": float(frac_max[i]),
                "kept_saliency_mean": float(kept_sal[i] / kept_n[i]) if kept_n[i] else None,
                "threshold": self.thresholds[i],
            })
        return out


def term_grad_norms(terms: dict[str, torch.Tensor], model: ResNet) -> dict[str, float]:
    """L2 norm of the gradient of each (weighted) loss term over the network's and the gates'
    parameters, separately: how hard each term pulls. Leaves ``.grad`` untouched (the graph is kept
    for the step's own backward)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out = {}
    for key, term in terms.items():
        if not term.requires_grad:
            out[f"{key}_grad_norm"] = 0.0
            out[f"{key}_gate_grad_norm"] = 0.0
            continue
        grads = torch.autograd.grad(term, [p for _, p in params], retain_graph=True, allow_unused=True)
        net = gate = 0.0
        for (n, _), gr in zip(params, grads):
            if gr is None:
                continue
            sq = float(gr.double().pow(2).sum())
            if ".gate" in n:
                gate += sq
            else:
                net += sq
        out[f"{key}_grad_norm"] = math.sqrt(net)
        out[f"{key}_gate_grad_norm"] = math.sqrt(gate)
    return out
