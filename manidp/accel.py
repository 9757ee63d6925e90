"""Channel-skipping inference: run, for each input, only the channels its gates keep (issue 4).

The official ManiDP code (and our ``GatedBasicBlock``) computes every convolution densely and then
multiplies its output by the gate mask, so a 55% MAC reduction buys no speed at all. This module
converts a trained gated ResNet (eval mode) into :class:`SkippingResNet`, which for every instance

1. computes gate 1 from the block input and the indices ``k1`` of the channels it keeps;
2. runs conv_a for those output channels only (BN folded into the weights once, at conversion),
   ReLU, and scales them by their saliency (``Gate.forward``: mask = pi * 1[pi >= thr]);
3. computes gate 2 from the kept channels only: the masked tensor the dense model feeds gate 2 is
   zero on pruned channels, so its pooled vector only meets FC1's columns ``k1``;
4. runs conv_b for its kept outputs ``k2`` over the kept inputs ``k1``, scales by saliency, and adds
   the result into the residual on channels ``k2`` (``index_add_``), then ReLU.

Stem, shortcuts and FC stay dense (BN folded too). Every convolution goes through one helper that
records k*k*H_out*W_out*C_in*C_out of the shapes it actually runs, so ``executed_macs`` is measured,
not derived from the masks; tests check it against :class:`manidp.macs.InstanceCounter`.

Two kernels compute a channel subset of a 3x3 convolution (chosen per layer, see ``_mm_layer``):
``F.conv2d`` on gathered weights (oneDNN; best at large spatial sizes), and im2col
(``F.unfold``) + one ``addmm`` on gathered weight rows (MKL GEMM; best where the feature map is
small and oneDNN's per-call weight reordering costs as much as the arithmetic).

Batches: ``strategy="loop"`` runs instances one by one (exact per-instance cost; the deployment
case is batch 1), ``strategy="union"`` runs the whole batch over the union of the channels its
instances keep and multiplies by each instance's mask (zero where an instance prunes a channel), so
the result is the same and every instance is charged the union's cost.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ManidpError
from .models import GatedBasicBlock, ResNet

STRATEGIES = ("loop", "union")

# Layers whose output map has at most this many pixels use im2col + GEMM instead of oneDNN's conv
# (measured in benchmarks/bench_accel.py --profile; see docs/acceleration.md).
MM_MAX_PIXELS = 28 * 28


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one convolution (eval-mode BN is an affine map)."""
    w = conv.weight.detach().float()
    if bn is None:
        return w.clone(), torch.zeros(w.shape[0])
    scale = bn.weight.detach().float() / torch.sqrt(bn.running_var.float() + bn.eps)
    bias = bn.bias.detach().float() - bn.running_mean.float() * scale
    return (w * scale[:, None, None, None]).contiguous(), bias.contiguous()


def conv_macs(weight_shape: torch.Size, out: torch.Tensor) -> int:
    """MACs of one convolution call for one instance, from the shapes it ran."""
    c_out, c_in, kh, kw = weight_shape
    return kh * kw * out.shape[-2] * out.shape[-1] * c_in * c_out


class _Gate(nn.Module):
    """Inference copy of a :class:`~manidp.models.Gate`: pooled input -> saliency pi and kept indices."""

    def __init__(self, gate):
        super().__init__()
        # FC1 stored transposed ([C_in, hidden]) so that gate 2 can gather the rows of the
        # channels gate 1 kept: a contiguous row gather instead of a strided column gather.
        self.register_buffer("fc1_t", gate.fc1.weight.detach().float().t().contiguous())
        self.register_buffer("fc2_w", gate.fc2.weight.detach().float().contiguous())
        self.register_buffer("fc2_b", gate.fc2.bias.detach().float().contiguous())
        self.threshold = float(gate.threshold)
        self.clamp = float(gate.clamp)

    def saliency(self, pooled: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """pi = clamp(ReLU(FC2(ReLU(FC1(pooled))))), with FC1 restricted to input ``rows``."""
        w1 = self.fc1_t if rows is None else self.fc1_t.index_select(0, rows)
        hidden = torch.mm(pooled, w1).relu_()
        # ReLU then clamp(max) equals clamp(0, max): one op instead of two.
        return torch.addmm(self.fc2_b, hidden, self.fc2_w.t()).clamp_(0.0, self.clamp)


class _DenseConv(nn.Module):
    """A dense convolution with BN folded in (stem, shortcuts)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None):
        super().__init__()
        w, b = fold_bn(conv, bn)
        self.register_buffer("weight", w)
        self.register_buffer("bias", b if bn is not None else None)
        self.stride, self.padding = conv.stride, conv.padding

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        return out, conv_macs(self.weight.shape, out)


def _out_size(size: int, stride: int) -> int:
    return (size + 2 - 3) // stride + 1      # 3x3 conv, padding 1


class _SkipBlock(nn.Module):
    """One gated basic block, executing only kept channels."""

    def __init__(self, block: GatedBasicBlock, mm_a: bool, mm_b: bool):
        super().__init__()
        wa, ba = fold_bn(block.conv1, block.bn1)
        wb, bb = fold_bn(block.conv2, block.bn2)
        self.c_out = wa.shape[0]
        self.stride = block.conv1.stride[0]
        self.mm_a, self.mm_b = mm_a, mm_b
        # conv_a: [C_out, C_in*9] rows are contiguous, so gathering kept output channels is a
        # row copy; the 4-d view of the same storage feeds F.conv2d.
        self.register_buffer("wa", wa.reshape(wa.shape[0], -1))
        self.register_buffer("ba", ba)
        # conv_b: [C_out, C_in, 9]; gathered on both channel dimensions per instance.
        self.register_buffer("wb", wb.reshape(wb.shape[0], wb.shape[1], -1))
        self.register_buffer("bb", bb)
        self.gate1, self.gate2 = _Gate(block.gate1), _Gate(block.gate2)
        self.shortcut = None
        if block.downsample is not None:
            bn = block.downsample[1] if len(block.downsample) > 1 else None
            self.shortcut = _DenseConv(block.downsample[0], bn)

    # -- convolution kernels over channel subsets ---------------------------------------------
    def _conv(self, x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor, stride: int,
              use_mm: bool) -> tuple[torch.Tensor, int]:
        """3x3 conv (padding 1) of ``x`` with flattened weight ``w2d`` [C_out', C_in'*9]."""
        c_out, c_in = w2d.shape[0], x.shape[1]
        if use_mm and x.shape[0] == 1:
            h = _out_size(x.shape[2], stride)
            w = _out_size(x.shape[3], stride)
            cols = F.unfold(x, 3, padding=1, stride=stride)[0]          # [C_in'*9, H*W]
            out = torch.addmm(bias[:, None], w2d, cols).view(1, c_out, h, w)
        else:
            out = F.conv2d(x, w2d.view(c_out, c_in, 3, 3), bias, stride, 1)
        return out, 9 * out.shape[2] * out.shape[3] * c_in * c_out

    # -- batch 1 (also the per-instance loop) --------------------------------------------------
    def forward_one(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
        """One instance ``x`` [1, C, H, W] -> (output, MACs run, |k1|, |k2|)."""
        macs = 0
        pi1 = self.gate1.saliency(x.mean((2, 3)))[0]
        k1 = torch.nonzero(pi1 >= self.gate1.threshold).flatten()
        n1 = k1.numel()
        if n1:
            h, m = self._conv(x, self.wa.index_select(0, k1), self.ba.index_select(0, k1),
                              self.stride, self.mm_a)
            macs += m
            # ReLU then saliency scaling (pi >= 0, so the order does not matter).
            h = h.relu_().mul_(pi1.index_select(0, k1)[None, :, None, None])
            pi2 = self.gate2.saliency(h.mean((2, 3)), k1)[0]
        else:
            # Everything pruned: gate 2 sees an all-zero tensor, FC1 contributes nothing.
            pi2 = self.gate2.fc2_b.clamp(0.0, self.gate2.clamp)
        k2 = torch.nonzero(pi2 >= self.gate2.threshold).flatten()
        n2 = k2.numel()
        if self.shortcut is None:
            out = x
        else:
            out, m = self.shortcut(x)
            macs += m
        if n2:
            if n1:
                wb = self.wb.index_select(0, k2).index_select(1, k1).view(n2, n1 * 9)
                y, m = self._conv(h, wb, self.bb.index_select(0, k2), 1, self.mm_b)
                macs += m
            else:
                # A convolution over zero input channels is its bias (0 MACs); the masked dense
                # model computes BN(conv(0)) = the folded bias and multiplies it by m2.
                y = self.bb.index_select(0, k2)[None, :, None, None].expand(
                    1, n2, out.shape[2], out.shape[3])
            y = y * pi2.index_select(0, k2)[None, :, None, None]
            # In place, also for the identity shortcut: the block input is engine-internal and
            # no longer needed.
            out.index_add_(1, k2, y)
        return out.relu_(), macs, n1, n2

    # -- whole batch over the union of kept channels --------------------------------------------
    def forward_union(self, x: torch.Tensor) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]:
        """Batch ``x`` -> (output, MACs run per instance, keep1 [B, C], keep2 [B, C])."""
        macs = 0
        pi1 = self.gate1.saliency(x.mean((2, 3)))
        keep1 = pi1 >= self.gate1.threshold
        u1 = torch.nonzero(keep1.any(0)).flatten()
        # Per-instance mask on the union: saliency where the instance keeps it, else zero.
        m1 = (pi1 * keep1).index_select(1, u1)
        if u1.numel():
            h, m = self._conv(x, self.wa.index_select(0, u1), self.ba.index_select(0, u1),
                              self.stride, False)
            macs += m
            h = h.relu_().mul_(m1[:, :, None, None])
            pi2 = self.gate2.saliency(h.mean((2, 3)), u1)
        else:
            pi2 = self.gate2.fc2_b.clamp(0.0, self.gate2.clamp).expand(x.shape[0], -1)
        keep2 = pi2 >= self.gate2.threshold
        u2 = torch.nonzero(keep2.any(0)).flatten()
        m2 = (pi2 * keep2).index_select(1, u2)
        if self.shortcut is None:
            out = x
        else:
            out, m = self.shortcut(x)
            macs += m
        if u2.numel():
            if u1.numel():
                wb = self.wb.index_select(0, u2).index_select(1, u1).view(u2.numel(), -1)
                y, m = self._conv(h, wb, self.bb.index_select(0, u2), 1, False)
                macs += m
            else:
                y = self.bb.index_select(0, u2)[None, :, None, None].expand(
                    x.shape[0], -1, out.shape[2], out.shape[3])
            out.index_add_(1, u2, y * m2[:, :, None, None])
        return out.relu_(), macs, keep1, keep2


class SkippingResNet(nn.Module):
    """Inference engine for a gated :class:`~manidp.models.ResNet` that skips pruned channels.

    After each forward, ``executed_macs`` holds the backbone MACs each instance actually ran
    (list of ints, one per instance) and ``kept`` the (B, num_gates) kept-channel counts.
    """

    def __init__(self, model: ResNet, mm_max_pixels: int = MM_MAX_PIXELS):
        super().__init__()
        self.arch = model.arch
        self.stem = _DenseConv(model.conv1, model.bn1)
        self.maxpool = model.maxpool
        size = model.input_size
        size = (size + 2 * model.conv1.padding[0] - model.conv1.kernel_size[0]) \
            // model.conv1.stride[0] + 1
        if self.maxpool is not None:
            size = (size + 2 - 3) // 2 + 1
        blocks = []
        for block in model.blocks():
            # Kernel choice is made for the model's nominal input size; any size still works.
            out = _out_size(size, block.conv1.stride[0])
            use_mm = out * out <= mm_max_pixels
            blocks.append(_SkipBlock(block, use_mm, use_mm))
            size = out
        self.blocks = nn.ModuleList(blocks)
        self.register_buffer("fc_w", model.fc.weight.detach().float().contiguous())
        self.register_buffer("fc_b", model.fc.bias.detach().float().contiguous())
        self.executed_macs: list[int] = []
        self.kept: torch.Tensor | None = None

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        x, macs = self.stem(x)
        x = x.relu_()
        return (self.maxpool(x) if self.maxpool is not None else x), macs

    def _head(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        return F.linear(x.mean((2, 3)), self.fc_w, self.fc_b), self.fc_w.numel()

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, strategy: str = "loop") -> torch.Tensor:
        if strategy not in STRATEGIES:
            raise ManidpError(f"unknown strategy '{strategy}': choose one of {', '.join(STRATEGIES)}")
        x = x.float()
        x, stem_macs = self._stem(x)
        if strategy == "union" and x.shape[0] > 1:
            x, macs, kept = self._blocks_union(x)
            executed = [stem_macs + macs] * x.shape[0]
        else:
            outs, executed, kept = [], [], []
            for i in range(x.shape[0]):
                y, macs, counts = self._blocks_one(x[i:i + 1])
                outs.append(y)
                executed.append(stem_macs + macs)
                kept.append(counts)
            x = torch.cat(outs) if len(outs) > 1 else outs[0]
            kept = torch.tensor(kept, dtype=torch.int64)
        logits, fc_macs = self._head(x)
        self.executed_macs = [m + fc_macs for m in executed]
        self.kept = kept
        return logits

    def _blocks_one(self, x: torch.Tensor) -> tuple[torch.Tensor, int, list[int]]:
        macs, counts = 0, []
        for block in self.blocks:
            x, m, n1, n2 = block.forward_one(x)
            macs += m
            counts += [n1, n2]
        return x, macs, counts

    def _blocks_union(self, x: torch.Tensor) -> tuple[torch.Tensor, int, torch.Tensor]:
        macs, keeps = 0, []
        for block in self.blocks:
            x, m, keep1, keep2 = block.forward_union(x)
            macs += m
            keeps += [keep1.sum(1), keep2.sum(1)]
        return x, macs, torch.stack(keeps, 1)


def convert(model: ResNet, mm_max_pixels: int = MM_MAX_PIXELS) -> SkippingResNet:
    """Build the channel-skipping engine of a gated ResNet in eval mode.

    Raises :class:`ManidpError` for a plain (ungated) model or one in train mode (BN folding uses
    running statistics and gates must not accumulate saliency).
    """
    if not isinstance(model, ResNet) or not model.gated:
        raise ManidpError("accel.convert needs a gated ResNet (build_model(arch, gated=True)); "
                          "a plain model has no gates to skip channels with")
    if model.training:
        raise ManidpError("accel.convert needs the model in eval mode: call model.eval() first")
    return SkippingResNet(model, mm_max_pixels).eval()
