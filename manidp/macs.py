"""Exact, analytic multiply-accumulate (MAC) counts, dense and per instance (reference section 7).

"FLOPs" in the pruning literature means MACs of conv and FC layers; BN, ReLU, pooling and additions
are not counted, biases are not counted. This module is the only place in the project that computes
MACs: evaluation and tables call it; the acceleration engine counts what it runs from its own shapes, and
its tests compare that count with this one.

The count is analytic: the cost of every layer comes from its shape (kernel, channels, output size
computed from stride and padding), not from forward hooks. For a gated block and instance i,

    conv_a = k*k*H_out*W_out * C_in   * |m1_i|
    conv_b = k*k*H_out*W_out * |m1_i| * |m2_i|

where |m| is the number of channels the gate keeps; stem, shortcuts and FC stay dense. The gates' own
FC layers are reported as a separate line (``gate_macs``), never folded into the backbone count.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .models import GatedBasicBlock, ResNet, build_model


@dataclass(frozen=True)
class LayerCost:
    """One conv or FC layer. ``in_gate``/``out_gate`` index the gate whose kept-channel count
    replaces ``c_in``/``c_out`` for an instance (None: the dimension is dense)."""
    name: str
    kind: str          # stem | conv_a | conv_b | shortcut | fc
    k: int
    c_in: int
    c_out: int
    h_out: int
    w_out: int
    in_gate: int | None = None
    out_gate: int | None = None

    @property
    def dense_macs(self) -> int:
        return self.k * self.k * self.h_out * self.w_out * self.c_in * self.c_out


def _out_size(size: int, conv: nn.Conv2d | nn.MaxPool2d) -> int:
    k, s, p = (conv.kernel_size, conv.stride, conv.padding)
    k, s, p = (v if isinstance(v, int) else v[0] for v in (k, s, p))
    return (size + 2 * p - k) // s + 1


def _conv(name: str, kind: str, conv: nn.Conv2d, size: int, **gates) -> tuple[LayerCost, int]:
    out = _out_size(size, conv)
    return LayerCost(name, kind, conv.kernel_size[0], conv.in_channels, conv.out_channels,
                     out, out, **gates), out


def layer_costs(model: ResNet, input_size: int | None = None) -> list[LayerCost]:
    """Every conv and FC layer of ``model`` in forward order, for square inputs of ``input_size``."""
    size = input_size or model.input_size
    costs = []
    cost, size = _conv("conv1", "stem", model.conv1, size)
    costs.append(cost)
    if model.maxpool is not None:
        size = _out_size(size, model.maxpool)
    g = 0
    for s in model.stages:
        for j, block in enumerate(getattr(model, s)):
            name = f"{s}.{j}"
            gated = isinstance(block, GatedBasicBlock)
            a, mid = _conv(f"{name}.conv1", "conv_a", block.conv1, size,
                           out_gate=g if gated else None)
            b, out = _conv(f"{name}.conv2", "conv_b", block.conv2, mid,
                           in_gate=g if gated else None, out_gate=g + 1 if gated else None)
            costs += [a, b]
            if block.downsample is not None:
                costs.append(_conv(f"{name}.downsample.0", "shortcut", block.downsample[0], size)[0])
            size = out
            g += 2 if gated else 0
    costs.append(LayerCost("fc", "fc", 1, model.fc.in_features, model.fc.out_features, 1, 1))
    return costs


def dense_macs(model: ResNet | str, input_size: int | None = None) -> int:
    """Backbone MACs of the dense network (gates excluded), e.g. 40,813,184 for CIFAR ResNet-20."""
    if isinstance(model, str):
        model = build_model(model)
    return sum(c.dense_macs for c in layer_costs(model, input_size))


def gate_macs(model: ResNet) -> int:
    """MACs of all gates' FC layers for one instance (0 for a plain model)."""
    return sum(g.macs for g in model.gates())


class InstanceCounter:
    """Vectorised per-instance MACs from kept-channel counts.

    Precomputes, for every layer, its spatial-kernel factor and which gate (if any) scales each
    channel dimension, so counting a batch is a handful of integer tensor ops.
    """

    def __init__(self, model: ResNet, input_size: int | None = None):
        self.costs = layer_costs(model, input_size)
        self.dense = sum(c.dense_macs for c in self.costs)
        self.gates = gate_macs(model)
        self.num_gates = len(model.gates())
        self.fixed = sum(c.dense_macs for c in self.costs if c.in_gate is None and c.out_gate is None)
        self.gated = [c for c in self.costs if c.in_gate is not None or c.out_gate is not None]

    def count(self, kept: torch.Tensor) -> torch.Tensor:
        """``kept``: (B, num_gates) integer counts of kept channels -> (B,) int64 backbone MACs."""
        kept = kept.to(torch.int64)
        total = torch.full((kept.shape[0],), self.fixed, dtype=torch.int64, device=kept.device)
        for c in self.gated:
            c_in = kept[:, c.in_gate] if c.in_gate is not None else c.c_in
            c_out = kept[:, c.out_gate] if c.out_gate is not None else c.c_out
            total += c.k * c.k * c.h_out * c.w_out * c_in * c_out
        return total


def kept_counts(model: ResNet) -> torch.Tensor:
    """(B, num_gates) kept-channel counts of the model's last forward pass."""
    return torch.stack([g.keep.sum(1) for g in model.gates()], dim=1)


class MacMeter:
    """Accumulates per-instance MACs and per-gate keep rates over an evaluation."""

    def __init__(self, model: ResNet, input_size: int | None = None):
        self.counter = InstanceCounter(model, input_size)
        # reductions are relative to the full-width architecture, also for a physically pruned network
        self.reference = full_width_macs(model, input_size)
        self.gated = model.gated
        self.widths = [g.c_out for g in model.gates()]
        self.names = model.gate_names()
        self.per_instance: list[torch.Tensor] = []
        self.kept_sum = torch.zeros(len(self.widths), dtype=torch.float64)

    @torch.no_grad()
    def update(self, model: ResNet, batch_size: int) -> None:
        if not self.gated:
            self.per_instance.append(torch.full((batch_size,), self.counter.dense, dtype=torch.int64))
            return
        kept = kept_counts(model)
        self.per_instance.append(self.counter.count(kept).cpu())
        self.kept_sum += kept.sum(0).double().cpu()

    def values(self) -> torch.Tensor:
        return torch.cat(self.per_instance) if self.per_instance else torch.zeros(0, dtype=torch.int64)

    def summary(self, bins: int = 20) -> dict:
        macs = self.values().double()
        n = macs.numel()
        dense = self.reference
        lo, hi = (float(macs.min()), float(macs.max())) if n else (0.0, 0.0)
        counts = torch.histc(macs, bins=bins, min=lo, max=hi if hi > lo else lo + 1) if n else torch.zeros(bins)
        edges = torch.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
        keep = (self.kept_sum / max(n, 1) / torch.tensor(self.widths, dtype=torch.float64)).tolist() \
            if self.gated else []
        mean = float(macs.mean()) if n else float("nan")
        return {
            "instances": n,
            "dense_macs": dense,
            "gate_macs": self.counter.gates,
            "macs_mean": mean,
            "macs_std": float(macs.std(unbiased=False)) if n else float("nan"),
            "macs_min": lo,
            "macs_max": hi,
            "reduction_pct": 100.0 * (1.0 - mean / dense) if n else float("nan"),
            "reduction_with_gates_pct": 100.0 * (1.0 - (mean + self.counter.gates) / dense) if n else float("nan"),
            "histogram": {"counts": [int(c) for c in counts.tolist()], "edges": edges.tolist()},
            "keep_rates": dict(zip(self.names, keep)),
        }


def kept_channels(rate: float, channels: int) -> int:
    """k = ceil(rate * C), at least 1: how many of C channels a remain rate keeps (the schedule's k,
    FBS's top-k, FPGM's kept filters, the calibration's rank)."""
    return max(1, math.ceil(rate * channels - 1e-9))


def uniform_keep_macs(model: ResNet, remain_rate: float, input_size: int | None = None) -> int:
    """Backbone MACs when every gate keeps ceil(remain_rate * C) channels (the schedule's k)."""
    counter = InstanceCounter(model, input_size)
    kept = torch.tensor([[math.ceil(remain_rate * g.c_out) for g in model.gates()]])
    return int(counter.count(kept)[0])


def inner_pruned_macs(model: ResNet, kept: list[int], input_size: int | None = None) -> int:
    """Backbone MACs of ``model`` with the conv_a of block j narrowed to ``kept[j]`` output channels.

    Static pruning inside the residual blocks (FPGM, ``manidp/methods/fpgm.py``): conv_a loses output
    channels and conv_b the same input channels; the residual width, stem, shortcuts and FC stay.
    Equals :func:`dense_macs` of the physically narrowed network (tested).
    """
    costs = layer_costs(model, input_size)
    blocks = [c for c in costs if c.kind == "conv_a"]
    if len(kept) != len(blocks):
        raise ValueError(f"{len(kept)} kept counts for {len(blocks)} blocks of {model.arch}")
    total, j = 0, -1
    for c in costs:
        if c.kind == "conv_a":
            j += 1
            total += c.k * c.k * c.h_out * c.w_out * c.c_in * kept[j]
        elif c.kind == "conv_b":
            total += c.k * c.k * c.h_out * c.w_out * kept[j] * c.c_out
        else:
            total += c.dense_macs
    return total


def full_width_macs(model: ResNet, input_size: int | None = None) -> int:
    """Dense MACs of ``model``'s architecture at full width: what every MAC reduction is relative to.

    Equals :func:`dense_macs` unless blocks were physically narrowed inside (FPGM's conv_a), in which
    case the executed MACs are ``dense_macs(model)`` and this is the unpruned network's count.
    """
    return inner_pruned_macs(model, [b.conv2.out_channels for b in model.blocks()], input_size)


def remain_rate_for_reduction(model: ResNet, target_reduction_pct: float,
                              input_size: int | None = None, cost=None) -> float:
    """The largest remain rate whose uniform keep still reaches ``target_reduction_pct`` MAC reduction.

    A planning aid: a trained model keeps different channels per instance and per layer, so the
    measured reduction lands near, not exactly on, this target. Raises if the target is unreachable
    (stem, shortcuts and FC are never pruned). ``cost(rate)`` gives the backbone MACs at a remain
    rate; default: every gate keeps ceil(rate * C) channels (:func:`uniform_keep_macs`).
    """
    from .errors import ManidpError
    dense = dense_macs(model, input_size)
    if cost is None:
        cost = lambda r: uniform_keep_macs(model, r, input_size)  # noqa: E731
    reduction = lambda r: 100.0 * (1 - cost(r) / dense)  # noqa: E731
    floor = reduction(1e-9)
    if not 0 <= target_reduction_pct <= floor:    # NaN fails too
        way = ("a larger one (a reduction is >= 0)" if target_reduction_pct < 0 else
               f"a smaller one ({floor:.1f}% is the most the gates can remove; stem, shortcuts and FC stay)"
               if target_reduction_pct > floor else "a number")
        raise ManidpError(f"--target-reduction {target_reduction_pct} is outside the valid range [0, {floor:.1f}] "
                          f"(% of {model.arch}'s MACs): choose {way}")
    lo, hi = 0.0, 1.0            # reduction(hi) <= target <= reduction(lo)
    for _ in range(50):
        mid = (lo + hi) / 2
        if reduction(mid) >= target_reduction_pct:
            lo = mid
        else:
            hi = mid
    return lo


def keep_plan(model: ResNet, target_reduction_pct: float, input_size: int | None = None) -> list[int]:
    """Kept channels per gate whose backbone MACs are nearest ``target_reduction_pct`` (for methods
    that keep exactly k channels per instance, FBS). A uniform remain rate moves every gate's
    k = ceil(rate * C) at once, which on ResNet-20's 16-channel gates misses by up to ~2 pp; from the
    uniform plan that just reaches the target, one channel at a time is given back to the gate
    keeping the smallest fraction, while that brings the reduction nearer the target."""
    counter = InstanceCounter(model, input_size)
    widths = [g.c_out for g in model.gates()]
    rate = remain_rate_for_reduction(model, target_reduction_pct, input_size)
    ks = [kept_channels(rate, c) for c in widths]
    miss = lambda k: abs(100.0 * (1 - int(counter.count(torch.tensor([k]))[0]) / counter.dense)  # noqa: E731
                         - target_reduction_pct)
    best = miss(ks)
    while True:
        for i in sorted((i for i in range(len(ks)) if ks[i] < widths[i]), key=lambda i: (ks[i] / widths[i], i)):
            trial = ks[:i] + [ks[i] + 1] + ks[i + 1:]
            if miss(trial) < best:
                ks, best = trial, miss(trial)
                break
        else:
            return ks


def costs_table(model: ResNet, input_size: int | None = None) -> list[dict]:
    """Per-layer dense cost, for printing (``manidp macs``)."""
    return [dict(asdict(c), macs=c.dense_macs) for c in layer_costs(model, input_size)]
