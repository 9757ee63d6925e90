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

Two kernels compute a channel subset of a 3x3 convolution (chosen per block by its map size, see
``MM_MAX_PIXELS``): ``F.conv2d`` on gathered weights (oneDNN; best on large maps), and im2col (a
strided copy, channels-last for conv_a) + one ``addmm`` on the gathered weight rows (MKL GEMM; best
on small maps, where oneDNN's per-call weight re-layout costs as much as the arithmetic).

Batches: ``strategy="loop"`` runs instances one by one (exact per-instance cost; the deployment
case is batch 1), ``strategy="union"`` runs the whole batch over the union of the channels its
instances keep and multiplies by each instance's mask (zero where an instance prunes a channel), so
the result is the same and every instance is charged the union's cost.
"""
from __future__ import annotations

import ctypes
import threading

import torch
import torch.nn.functional as F
from torch import nn

from . import native
from .errors import ManidpError
from .models import Gate, GatedBasicBlock, ResNet

STRATEGIES = ("loop", "union")

# Blocks whose output map has at most this many pixels use im2col + GEMM instead of oneDNN's conv
# at batch 1 (per-block timings on ResNet-34: GEMM wins or ties at 28x28 and below, oneDNN at 56x56;
# see docs/kernel_rounds.md).
MM_MAX_PIXELS = 28 * 28


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one convolution (eval-mode BN is an affine map)."""
    w = conv.weight.detach().float()
    if bn is None:
        return w.clone(), torch.zeros(w.shape[0])
    scale = bn.weight.detach().float() / torch.sqrt(bn.running_var.float() + bn.eps)
    bias = bn.bias.detach().float() - bn.running_mean.float() * scale
    return (w * scale[:, None, None, None]).contiguous(), bias.contiguous()


def _own(t: torch.Tensor) -> torch.Tensor:
    """A float32 copy the engine owns: ``.float().contiguous()`` alone may alias the model's
    parameter, and the engine is a snapshot."""
    return t.detach().float().clone(memory_format=torch.contiguous_format)


def conv_macs(weight_shape: torch.Size, out: torch.Tensor) -> int:
    """MACs of one convolution call for one instance, from the shapes it ran."""
    c_out, c_in, kh, kw = weight_shape
    return kh * kw * out.shape[-2] * out.shape[-1] * c_in * c_out


class _Gate(nn.Module):
    """Inference copy of a :class:`~manidp.models.Gate`: pooled input -> saliency pi."""

    def __init__(self, gate):
        super().__init__()
        # Both FC weights stored transposed ([in, out]): gate 2 gathers the FC1 rows of the
        # channels gate 1 kept (a contiguous row copy, not a strided column gather), and
        # addmm needs no transpose op per call.
        self.register_buffer("fc1_t", _own(gate.fc1.weight.t()))
        self.register_buffer("fc2_t", _own(gate.fc2.weight.t()))
        self.register_buffer("fc2_b", _own(gate.fc2.bias))
        self.threshold = float(gate.threshold)
        self.clamp = float(gate.clamp)

    def saliency(self, pooled: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """pi = clamp(ReLU(FC2(ReLU(FC1(pooled))))), with FC1 restricted to input ``rows``."""
        w1 = self.fc1_t if rows is None else self.fc1_t.index_select(0, rows)
        hidden = torch.mm(pooled, w1).relu_()
        # ReLU then clamp(max) equals clamp(0, max): one op instead of two.
        return torch.addmm(self.fc2_b, hidden, self.fc2_t).clamp_(0.0, self.clamp)

    def saliency_of_zeros(self, batch: int) -> torch.Tensor:
        """Saliency when every input channel is pruned: the gate then reads an all-zero map."""
        return self.fc2_b.clamp(0.0, self.clamp).expand(batch, -1)

    def kept(self, pi: torch.Tensor) -> torch.Tensor:
        """Indices of the kept channels of one instance's saliency ``pi`` [C]."""
        return torch.nonzero(pi >= self.threshold).flatten()


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
    return (size + 2 - 3) // stride + 1      # 3x3 kernel, padding 1


def im2col3x3(x: torch.Tensor, stride: int) -> tuple[torch.Tensor, int, int]:
    """Columns [C*9, H_out*W_out] of a 3x3, padding-1 convolution over ``x`` [C, H, W], rows in
    (channel, kh, kw) order like ``F.unfold``: one strided copy of the padded map, 1.5-5x faster
    than ``F.unfold`` on ResNet shapes (measured, 1 thread)."""
    c, h, w = x.shape
    h_out, w_out = _out_size(h, stride), _out_size(w, stride)
    xp = F.pad(x, (1, 1, 1, 1))
    s0, s1, s2 = xp.stride()
    taps = xp.as_strided((c, 3, 3, h_out, w_out), (s0, s1, s2, s1 * stride, s2 * stride))
    return taps.reshape(c * 9, h_out * w_out), h_out, w_out


def max_pool_3x3s2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 3, 2, 1)`` for ``x >= 0`` (the stem's ReLU output), bit-identical.

    Separable (rows, then columns) with zero padding, which equals -inf padding on non-negative
    input; 4-5x faster than ``max_pool2d`` on the 112x112 stem map (that op also computes the
    argmax indices).
    """
    h, w = x.shape[-2:]
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    xp = F.pad(x, (1, 1, 1, 1))
    r = torch.maximum(torch.maximum(xp[..., 0:2 * ho:2, :], xp[..., 1:2 * ho + 1:2, :]),
                      xp[..., 2:2 * ho + 2:2, :])
    return torch.maximum(torch.maximum(r[..., 0:2 * wo:2], r[..., 1:2 * wo + 1:2]),
                         r[..., 2:2 * wo + 2:2])


def im2row3x3(x: torch.Tensor, stride: int) -> tuple[torch.Tensor, int, int]:
    """Rows [H_out*W_out, 9*C] of a 3x3, padding-1 convolution over ``x`` [C, H, W], columns in
    (kh, kw, channel) order. Built channels-last, so the strided copy moves runs of C contiguous
    floats instead of runs of W_out: 3-4x faster than :func:`im2col3x3` on 7x7 and 14x14 maps."""
    c, h, w = x.shape
    h_out, w_out = _out_size(h, stride), _out_size(w, stride)
    xp = F.pad(x.permute(1, 2, 0), (0, 0, 1, 1, 1, 1))           # [H+2, W+2, C]
    s0, s1, s2 = xp.stride()
    taps = xp.as_strided((h_out, w_out, 3, 3, c), (s0 * stride, s1 * stride, s0, s1, s2))
    return taps.reshape(h_out * w_out, 9 * c), h_out, w_out


def conv3x3(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor, stride: int,
            use_mm: bool, tap_major: bool = False) -> tuple[torch.Tensor, int]:
    """3x3, padding-1 convolution of ``x`` with flattened weight ``w2d`` [C_out', C_in'*9] and the
    MACs it ran (from the shapes, per instance). ``tap_major``: ``w2d``'s columns are in (kh, kw,
    channel) order instead of PyTorch's (channel, kh, kw).

    ``use_mm`` (batch 1 only): im2col + one MKL GEMM. On small maps oneDNN's conv re-lays out the
    weight on every call (it cannot cache a per-instance gathered weight), which costs about as
    much as the arithmetic; the GEMM reads the gathered rows as they are.
    """
    c_out, c_in = w2d.shape[0], x.shape[1]
    if use_mm and x.shape[0] == 1:
        if tap_major:
            rows, h, w = im2row3x3(x[0], stride)
            out = torch.addmm(bias[:, None], w2d, rows.t())
        else:
            cols, h, w = im2col3x3(x[0], stride)
            out = torch.addmm(bias[:, None], w2d, cols)
        out = out.view(1, c_out, h, w)
    else:
        w4 = w2d.view(c_out, 3, 3, c_in).permute(0, 3, 1, 2) if tap_major \
            else w2d.view(c_out, c_in, 3, 3)
        out = F.conv2d(x, w4, bias, stride, 1)
    return out, 9 * out.shape[2] * out.shape[3] * c_in * c_out


def _scale(t: torch.Tensor) -> torch.Tensor:
    """Per-channel factors [B, C] -> broadcastable [B, C, 1, 1]."""
    return t[:, :, None, None]


class _SkipBlock(nn.Module):
    """One gated basic block that executes only the channels its gates keep."""

    def __init__(self, block: GatedBasicBlock, use_mm: bool):
        super().__init__()
        self._native: tuple[int, native.BlockWeights] | None = None
        wa, ba = fold_bn(block.conv1, block.bn1)
        wb, bb = fold_bn(block.conv2, block.bn2)
        self.stride = block.conv1.stride[0]
        self.use_mm = use_mm
        # conv_a as [C_out, C_in*9]: rows are contiguous, so the kept output channels are a row
        # copy. GEMM blocks store each row in (kh, kw, channel) order to match im2row3x3 (conv_a
        # reads every input channel, so the fast channels-last im2row applies; conv_b keeps
        # PyTorch's order, which its (output, input)-pair gather below needs).
        self.tap_major = use_mm
        wa = wa.permute(0, 2, 3, 1) if use_mm else wa
        self.register_buffer("wa", wa.reshape(wa.shape[0], -1).contiguous())
        self.register_buffer("ba", ba)
        # conv_b as [C_out*C_in, 9], one row per (output, input) channel pair: the kept pairs are
        # gathered by ONE index_select, already in the [|k2|, |k1|*9] layout both kernels read.
        # (Two successive index_selects copy twice, the second with 36-byte pieces: the flat
        # gather cut conv_b's gather time by ~1/3 on ResNet-34's 512-channel layers.)
        self.c_mid = wb.shape[1]
        self.register_buffer("wb", wb.reshape(-1, 9))
        self.register_buffer("bb", bb)
        self.gate1, self.gate2 = _Gate(block.gate1), _Gate(block.gate2)
        self.shortcut = None
        if block.downsample is not None:
            bn = block.downsample[1] if len(block.downsample) > 1 else None
            self.shortcut = _DenseConv(block.downsample[0], bn)

    def native_weights(self) -> native.BlockWeights:
        """This block's weights as the C kernel's ``block_t`` (pointers into this module's buffers;
        rebuilt if the buffers moved, e.g. after ``.to()``)."""
        if self._native is None or self._native[0] != self.wa.data_ptr():
            if self.wa.dtype != torch.float32 or self.wa.device.type != "cpu":
                raise ManidpError("the native kernel runs float32 weights on the CPU: convert the "
                                  "model again, or use kernel='torch'")
            if self.tap_major:
                raise ManidpError("the native kernel needs conv_a in PyTorch's (channel, kh, kw) "
                                  "order: build the engine with kernel='native'")
            g1, g2, sc = self.gate1, self.gate2, self.shortcut
            w = native.BlockWeights(
                c_in=self.wa.shape[1] // 9, c_mid=self.c_mid, c_out=self.bb.numel(),
                stride=self.stride, hid1=g1.fc1_t.shape[1], hid2=g2.fc1_t.shape[1],
                wa=self.wa.data_ptr(), ba=self.ba.data_ptr(), wb=self.wb.data_ptr(),
                bb=self.bb.data_ptr(), g1_fc1_t=g1.fc1_t.data_ptr(), g1_fc2_t=g1.fc2_t.data_ptr(),
                g1_fc2_b=g1.fc2_b.data_ptr(), g2_fc1_t=g2.fc1_t.data_ptr(),
                g2_fc2_t=g2.fc2_t.data_ptr(), g2_fc2_b=g2.fc2_b.data_ptr(),
                ws=None if sc is None else sc.weight.data_ptr(),
                bs=None if sc is None or sc.bias is None else sc.bias.data_ptr(),
                g1_threshold=g1.threshold, g1_clamp=g1.clamp, g2_threshold=g2.threshold,
                g2_clamp=g2.clamp)
            self._native = (self.wa.data_ptr(), w)
        return self._native[1]

    def forward_native(self, x: torch.Tensor, h: int, w: int, threads: int | None = None,
                       sums: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, int, int, int, int, int, torch.Tensor]:
        """One instance with the C kernel: padded-planar ``x`` (:func:`to_padded`) of an ``h`` x
        ``w`` map and its channel sums if known (the previous block's) -> (output, its height,
        width, MACs run, |k1|, |k2|, its channel sums). With an identity shortcut the output is
        ``x`` itself, updated in place."""
        lib, weights = native.load(), self.native_weights()
        ho, wo = _out_size(h, self.stride), _out_size(w, self.stride)
        out = x if self.shortcut is None else x.new_empty(padded_size(weights.c_out, ho, wo))
        kept = (ctypes.c_int64 * 2)()
        out_sums = x.new_empty(weights.c_out)
        macs = lib.manidp_block(ctypes.byref(weights), x.data_ptr(), out.data_ptr(), h, w,
                                threads or torch.get_num_threads(), kept,
                                None if sums is None else sums.data_ptr(), out_sums.data_ptr())
        if macs < 0:
            raise MemoryError("manidp.accel native kernel: out of memory")
        return out, ho, wo, macs, kept[0], kept[1], out_sums

    def _gather_b(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """conv_b weight for outputs ``rows`` over inputs ``cols``: [|rows|, |cols|*9]."""
        pairs = torch.add(cols, rows[:, None], alpha=self.c_mid).flatten()
        return self.wb.index_select(0, pairs).view(rows.numel(), -1)

    def _residual(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        # The identity shortcut returns ``x`` itself, and the caller adds into it in place: the
        # block input is engine-internal and no longer needed at that point.
        return (x, 0) if self.shortcut is None else self.shortcut(x)

    def forward_one(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
        """One instance ``x`` [1, C, H, W] -> (output, MACs run, |k1|, |k2|)."""
        pi1 = self.gate1.saliency(x.mean((2, 3)))
        k1 = self.gate1.kept(pi1[0])
        macs = 0
        if k1.numel():
            h, macs = conv3x3(x, self.wa.index_select(0, k1), self.ba.index_select(0, k1),
                              self.stride, self.use_mm, self.tap_major)
            h = h.relu_().mul_(_scale(pi1.index_select(1, k1)))   # pi >= 0: ReLU and scale commute
            # Gate 2 reads the masked map, zero on pruned channels: only FC1 rows k1 matter.
            pi2 = self.gate2.saliency(h.mean((2, 3)), k1)
        else:
            pi2 = self.gate2.saliency_of_zeros(1)
        k2 = self.gate2.kept(pi2[0])
        out, m = self._residual(x)
        macs += m
        if k2.numel():
            if k1.numel():
                y, m = conv3x3(h, self._gather_b(k2, k1), self.bb.index_select(0, k2), 1,
                               self.use_mm)
                macs += m
                y = y.mul_(_scale(pi2.index_select(1, k2)))
            else:
                # A convolution over zero input channels is its bias (0 MACs); the masked dense
                # model computes BN(conv(0)) = the folded bias, times m2.
                y = _scale(self.bb.index_select(0, k2)[None] * pi2.index_select(1, k2))
                y = y.expand(1, -1, out.shape[2], out.shape[3])
            out.index_add_(1, k2, y)
        return out.relu_(), macs, k1.numel(), k2.numel()

    def forward_union(self, x: torch.Tensor) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]:
        """Batch ``x`` over the union of kept channels -> (output, MACs run per instance,
        keep1 [B, C], keep2 [B, C])."""
        batch = x.shape[0]
        pi1 = self.gate1.saliency(x.mean((2, 3)))
        keep1 = pi1 >= self.gate1.threshold
        u1 = torch.nonzero(keep1.any(0)).flatten()
        # Each instance's mask on the union: its saliency where it keeps a channel, else zero.
        m1 = (pi1 * keep1).index_select(1, u1)
        macs = 0
        if u1.numel():
            h, macs = conv3x3(x, self.wa.index_select(0, u1), self.ba.index_select(0, u1),
                              self.stride, False, self.tap_major)
            h = h.relu_().mul_(_scale(m1))
            pi2 = self.gate2.saliency(h.mean((2, 3)), u1)
        else:
            pi2 = self.gate2.saliency_of_zeros(batch)
        keep2 = pi2 >= self.gate2.threshold
        u2 = torch.nonzero(keep2.any(0)).flatten()
        m2 = (pi2 * keep2).index_select(1, u2)
        out, m = self._residual(x)
        macs += m
        if u2.numel():
            if u1.numel():
                y, m = conv3x3(h, self._gather_b(u2, u1), self.bb.index_select(0, u2), 1, False)
                macs += m
                y = y.mul_(_scale(m2))
            else:
                y = _scale(self.bb.index_select(0, u2)[None] * m2)
                y = y.expand(-1, -1, out.shape[2], out.shape[3])
            out.index_add_(1, u2, y)
        return out.relu_(), macs, keep1, keep2


class SkippingResNet(nn.Module):
    """Inference engine for a gated :class:`~manidp.models.ResNet` that skips pruned channels.

    ``forward(x, strategy)``: ``"loop"`` (default) runs the instances one at a time, each at its
    own cost; ``"union"`` runs the batch together over the union of kept channels (see module
    docstring). After each call, ``executed_macs`` holds the backbone MACs each instance ran (list
    of ints, gates excluded like :func:`manidp.macs.dense_macs`) and ``kept`` the (B, num_gates)
    kept-channel counts (union: what each instance's own gates kept).

    The engine is a snapshot: it copies (and folds) the weights and thresholds at conversion.
    """

    def __init__(self, model: ResNet, mm_max_pixels: int = MM_MAX_PIXELS, channels_last: bool = True,
                 kernel: str = "torch"):
        super().__init__()
        self.arch = model.arch
        self.kernel = kernel
        if kernel == "native":
            mm_max_pixels = 0            # conv_a kept in PyTorch's weight order, which the C kernel reads
        self.stem = _DenseConv(model.conv1, model.bn1)
        self.maxpool = model.maxpool is not None
        size = _conv_out(model.input_size, model.conv1)
        size = (size - 1) // 2 + 1 if self.maxpool else size
        blocks = []
        for block in model.blocks():
            # Kernel chosen for the model's nominal input size; any input size still works.
            size = _out_size(size, block.conv1.stride[0])
            blocks.append(_SkipBlock(block, use_mm=size * size <= mm_max_pixels))
        self.blocks = nn.ModuleList(blocks)
        self.register_buffer("fc_w", _own(model.fc.weight))
        self.register_buffer("fc_b", _own(model.fc.bias))
        self.executed_macs: list[int] = []
        self.kept: torch.Tensor | None = None
        self.channels_last = channels_last

    def _stem_conv(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The stem convolution (BN folded), before its ReLU."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.stem(x)

    def _relu_pool(self, x: torch.Tensor) -> torch.Tensor:
        x = x.relu_()
        if not self.maxpool:
            return x
        # oneDNN's max-pool is 3x faster than the separable one on channels-last maps, 3x slower
        # on NCHW maps (measured on the 112x112 stem map, 2 threads).
        return F.max_pool2d(x, 3, 2, 1) if self.channels_last else max_pool_3x3s2(x)

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        x, macs = self._stem_conv(x)
        return self._relu_pool(x), macs

    def _head(self, pooled: torch.Tensor) -> tuple[torch.Tensor, int]:
        """FC on the globally pooled features [B, C] -> logits, and its MACs per instance."""
        return F.linear(pooled, self.fc_w, self.fc_b), self.fc_w.numel()

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, strategy: str = "loop") -> torch.Tensor:
        if strategy not in STRATEGIES:
            raise ManidpError(f"unknown strategy '{strategy}': choose one of {', '.join(STRATEGIES)}")
        x = x.float()
        union = strategy == "union" and x.shape[0] > 1
        native_loop = self.kernel == "native" and x.device.type == "cpu" and not union
        if native_loop:
            # The C kernel runs the stem (conv, ReLU, max-pool), every block and the FC head in
            # one call (see _network_native); its MACs include the stem's.
            _, logits, executed, kept = self._network_native(x, features=False)
        elif union:
            x, stem_macs = self._stem(x)
            x, macs, kept = self._blocks_union(x)
            x = x.mean((2, 3))
            executed = [stem_macs + macs] * x.shape[0]
        else:
            x, stem_macs = self._stem(x)
            outs, executed, kept = [], [], []
            for i in range(x.shape[0]):
                y, macs, counts = self._blocks_one(x[i:i + 1])
                outs.append(y)
                executed.append(stem_macs + macs)
                kept.append(counts)
            x = torch.cat(outs) if len(outs) > 1 else outs[0]
            kept = torch.tensor(kept, dtype=torch.int64)
        if native_loop:
            fc_macs = self.fc_w.numel()
        else:
            logits, fc_macs = self._head(x)       # x: pooled features [B, C]
        self.executed_macs = [m + fc_macs for m in executed]
        self.kept = kept
        return logits

    def _blocks_one(self, x: torch.Tensor) -> tuple[torch.Tensor, int, list[int]]:
        macs, counts = 0, []
        for block in self.blocks:
            x, m, n1, n2 = block.forward_one(x)
            macs += m
            counts += [n1, n2]
        return x.mean((2, 3)), macs, counts

    def _stem_size(self, h: int, w: int) -> tuple[int, int, int]:
        """Channels, height and width of the stem's output (after the max-pool) for an h x w image."""
        c_out, _, k, _ = self.stem.weight.shape
        s, p = self.stem.stride[0], self.stem.padding[0]
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if self.maxpool:
            ho, wo = (ho - 1) // 2 + 1, (wo - 1) // 2 + 1
        return c_out, ho, wo

    def _native_stem(self, image: torch.Tensor, out: torch.Tensor, threads: int | None = None) -> int:
        """One image [C, H, W] through the stem with the C kernel: convolution (BN folded), ReLU
        and the ImageNet max-pool, written whole into ``out`` in the padded-planar layout
        (:func:`to_padded`, size from :meth:`_stem_size`) -> the stem's MACs. ResNet-34's stem:
        2.4 ms, against 2.7 ms for oneDNN's convolution + PyTorch's pool (1 thread, side by side, a
        loaded machine); 1.71 ms on an idle one, against 1.43 ms for ONNX Runtime's two operators."""
        st = self._native_args()[0]
        image = image.contiguous()
        macs = native.load().manidp_stem(image.data_ptr(), st.c_in, image.shape[1], image.shape[2],
                                         st.w, st.b, st.c_out, st.k, st.stride, st.pad, st.maxpool,
                                         out.data_ptr(), threads or torch.get_num_threads())
        if macs < 0:
            raise MemoryError("manidp.accel native kernel: out of memory")
        return macs

    def _workspace(self, n: int, size: int) -> torch.Tensor:
        """[n, size] floats for the batch's stem outputs, kept between calls (one per calling
        thread): a fresh zeroed 74 KB tensor per call cost ~40 us at batch 1 on CIFAR, about 3%
        of ResNet-56's latency."""
        spaces = self.__dict__.setdefault("_workspaces", {})
        ws = spaces.get(threading.get_ident())
        if ws is None or ws.shape != (n, size):
            spaces[threading.get_ident()] = ws = torch.empty(n, size)
        return ws

    def _native_args(self) -> tuple[native.StemWeights, ctypes.Array]:
        """(the stem's ``stem_t``, every block's ``block_t`` as one C array), rebuilt only if a
        buffer moved: the stem's weight and one per block are checked, reading the modules'
        buffer dicts directly (asking 27 blocks for their ``block_t`` cost ~25 us per call, and
        reading their buffers as module attributes ~19 us)."""
        cached = self.__dict__.get("_native_cache")
        if cached is not None:
            stem, array, dicts, key = cached
            if [d["wa"].data_ptr() for d in dicts] == key and stem.w == self.stem.weight.data_ptr():
                return stem, array
        conv = self.stem
        c_out, c_in, k, _ = conv.weight.shape
        stem = native.StemWeights(conv.weight.data_ptr(), None if conv.bias is None else conv.bias.data_ptr(),
                                  c_in, c_out, k, conv.stride[0], conv.padding[0], int(self.maxpool))
        weights = [b.native_weights() for b in self.blocks]
        array = (native.BlockWeights * len(weights))(*weights)
        dicts = [b._buffers for b in self.blocks]
        self.__dict__["_native_cache"] = (stem, array, dicts, [d["wa"].data_ptr() for d in dicts])
        return stem, array

    def _network_native(self, x: torch.Tensor, features: bool = True
                        ) -> tuple[torch.Tensor | None, torch.Tensor, list[int], torch.Tensor]:
        """A batch of images through the stem, every block and the FC head with the C kernel, in
        one call (``manidp_forward``): at batch 1 the instance uses every thread; at batch > 1
        instances are split across threads, each single-threaded (whole instances keep the cores
        busier than tiles of one small GEMM) -> (pooled features [B, C] (``features``, else None),
        logits [B, classes], stem and block MACs per instance, kept counts [B, num_gates]). Every
        allocation here counts: at batch 1 on CIFAR this Python runs with caches the kernel has just
        flushed (four tensors cost ~26 us per call there; the MACs come back in a ctypes array)."""
        n = x.shape[0]
        x = x.contiguous()
        c, h, w = self._stem_size(*x.shape[-2:])
        bufs = self._workspace(n, padded_size(c, h, w))
        stem, blocks = self._native_args()
        pointers = (ctypes.c_void_p * n)(*[bufs[i].data_ptr() for i in range(n)])
        pooled = x.new_empty(n, blocks[-1].c_out) if features else None
        logits = x.new_empty(n, self.fc_w.shape[0])
        macs = (ctypes.c_int64 * n)()
        kept = torch.empty(n, 2 * len(self.blocks), dtype=torch.int64)
        status = native.load().manidp_forward(stem, blocks, len(self.blocks), self.fc_w.data_ptr(),
                                              self.fc_b.data_ptr(), self.fc_w.shape[0], n, x.data_ptr(),
                                              x.shape[-2], x.shape[-1], pointers, torch.get_num_threads(),
                                              None if pooled is None else pooled.data_ptr(),
                                              logits.data_ptr(), macs, kept.data_ptr())
        if status != 0:
            raise MemoryError("manidp.accel native kernel: out of memory")
        return pooled, logits, list(macs), kept

    def _blocks_native(self, x: torch.Tensor, threads: int | None = None) -> tuple[torch.Tensor, int, list[int]]:
        """One image [1, C, H, W] through the C stem and then block by block, one C call each, on
        padded-planar maps (see :func:`to_padded`): the per-block path, which _network_native must
        match bit for bit -> (pooled features, stem and block MACs, kept counts)."""
        c, h, w = self._stem_size(*x.shape[-2:])
        buf = x.new_empty(padded_size(c, h, w))
        macs = self._native_stem(x[0], buf, threads)
        counts, sums = [], None
        for block in self.blocks:
            buf, h, w, m, n1, n2, sums = block.forward_native(buf, h, w, threads, sums)
            macs += m
            counts += [n1, n2]
        c = self.blocks[-1].bb.numel()
        pooled = buf.new_empty(1, c)
        native.load().manidp_pool(sums.data_ptr(), c, h, w, pooled.data_ptr())
        return pooled, macs, counts

    def _blocks_union(self, x: torch.Tensor) -> tuple[torch.Tensor, int, torch.Tensor]:
        macs, counts = 0, []
        for block in self.blocks:
            x, m, keep1, keep2 = block.forward_union(x)
            macs += m
            counts += [keep1.sum(1), keep2.sum(1)]
        return x, macs, torch.stack(counts, 1)


def padded_size(c: int, h: int, w: int) -> int:
    """Floats in a padded-planar map: ``c`` planes of h+2 rows of pitch w+1 (zero top and bottom
    rows, one zero column per row: see kernels/skip_block.c) and the C kernel's slack (its GEMM
    reads up to one register tile past a row's last column)."""
    return c * (h + 2) * (w + 1) + native.SLACK


def to_padded(x: torch.Tensor) -> torch.Tensor:
    """[C, H, W] -> the flat padded-planar layout the C kernel reads and writes."""
    c, h, w = x.shape
    buf = x.new_zeros(padded_size(c, h, w))
    buf[:c * (h + 2) * (w + 1)].view(c, h + 2, w + 1)[:, 1:-1, 1:].copy_(x)
    return buf


def _conv_out(size: int, conv: nn.Conv2d) -> int:
    return (size + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1


KERNELS = ("auto", "native", "torch")


def convert(model: ResNet, mm_max_pixels: int = MM_MAX_PIXELS, channels_last: bool = True,
            kernel: str = "auto") -> SkippingResNet:
    """Build the channel-skipping engine of a gated ResNet in eval mode.

    ``mm_max_pixels``: blocks whose output map has at most this many pixels (at the model's
    nominal input size) use the im2col + GEMM kernel at batch 1; 0 disables it.
    ``channels_last``: run on channels-last (NHWC) feature maps. oneDNN's convolution over a
    kept-channel subset (odd channel counts such as 35) is up to 2x faster in NHWC, and the
    GEMM kernel's im2row reads NHWC maps without a transposing copy.
    Raises :class:`ManidpError` for a plain (ungated) model or one in train mode (BN folding uses
    the running statistics, and the engine has no train-mode behaviour).
    """
    if not isinstance(model, ResNet) or not model.gated:
        raise ManidpError("accel.convert needs a gated ResNet (build_model(arch, gated=True)); "
                          "a plain model has no gates to skip channels with")
    other = sorted({type(g).__name__ for g in model.gates() if not isinstance(g, Gate)})
    if other:
        raise ManidpError(f"accel.convert runs ManiDP's threshold gates only; this model has {', '.join(other)} "
                          f"gates (e.g. FBS's top-k), which the engine does not implement")
    if model.training:
        raise ManidpError("accel.convert needs the model in eval mode: call model.eval() first")
    if kernel not in KERNELS:
        raise ManidpError(f"unknown kernel '{kernel}': choose one of {', '.join(KERNELS)}")
    if kernel != "torch" and native.load() is None:
        if kernel == "native":
            raise ManidpError(f"kernel='native' is unavailable ({native.why_unavailable()}); "
                              "use kernel='torch'")
        kernel = "torch"
    elif kernel == "auto":
        kernel = "native"
    return SkippingResNet(model, mm_max_pixels, channels_last, kernel).eval()


# -- Synthetic gates, for tests and benchmarks without a trained model -----------------------------

@torch.no_grad()
def randomize_(model: ResNet, x: torch.Tensor, seed: int = 0) -> ResNet:
    """Stand-in for a trained model: random gate FC weights and biases (saliency around 1, varying
    per instance and channel), random BN affine terms, and BN running statistics taken from batch
    ``x`` and then perturbed, so BN folding is really exercised while activations stay bounded
    through deep networks (untrained random statistics make them explode). Leaves ``model`` in eval
    mode with all gates open."""
    g = torch.Generator().manual_seed(seed)
    for gate in model.gates():
        gate.fc1.weight.copy_(torch.randn(gate.fc1.weight.shape, generator=g)
                              * (2.0 / gate.c_in) ** 0.5)
        # Bias spread sets which channels tend to be kept; the small FC2 weights make saliency
        # vary per instance (and keep its mean near 1: larger ones feed back through the
        # residual stream, since saliency scales the features the next gates read).
        gate.fc2.weight.copy_(torch.randn(gate.fc2.weight.shape, generator=g)
                              * (0.04 / gate.hidden) ** 0.5)
        gate.fc2.bias.copy_(1.0 + 0.25 * torch.randn(gate.c_out, generator=g))
        gate.threshold.fill_(-10000.0)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.2)
        bn.reset_running_stats()
        bn.momentum = None                   # cumulative average: one batch -> its statistics
    # One train-mode pass: BN takes this batch's statistics, and each gate's FC1 is rescaled to
    # the size of the features it reads, so saliency stays around 1 at every depth (otherwise it
    # grows with the residual stream and saturates at the clamp).
    def rescale_fc1(gate, inputs):
        x = inputs[0]
        pooled = x.float().mean((2, 3)) if x.dim() == 4 else x
        gate.fc1.weight.div_(pooled.pow(2).mean().sqrt().clamp(min=1e-6))

    handles = [gate.register_forward_pre_hook(rescale_fc1) for gate in model.gates()]
    model.train()
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    model.eval()
    for bn in bns:
        bn.momentum = 0.1
        c = bn.num_features
        # Floor: a channel (nearly) constant on this batch would otherwise get a huge 1/sqrt(var)
        # and amplify the small changes that masks make, and deep nets (ResNet-110) overflow.
        var = bn.running_var
        var.mul_(torch.rand(c, generator=g) * 0.6 + 0.7).add_(0.05 * float(var.mean()) + 1e-3)
        bn.running_mean.add_(torch.randn(c, generator=g) * 0.1 * bn.running_var.sqrt())
    for gate in model.gates():
        gate.reset_statistics()
    return model


def _robust_threshold(pi: torch.Tensor, remain: float, window: float = 0.05) -> float:
    """A threshold keeping about ``remain`` of the values in ``pi``, placed in the widest gap
    between neighbouring values near that quantile, so that rounding differences between two
    implementations of the same gate cannot flip a decision."""
    v = pi.flatten().double().sort(descending=True).values
    n = v.numel()
    k = round(remain * n)
    if k >= n:
        return -10000.0                       # keep everything (the gates' initial threshold)
    if k <= 0:
        return float(v[0]) + 1.0              # keep nothing
    span = int(window * n)
    lo, hi = max(1, k - span), min(n - 1, k + span)
    gaps = v[lo - 1:hi] - v[lo:hi + 1]          # gap between v[i-1] and v[i], i in [lo, hi]
    i = lo + int(gaps.argmax())
    return float((v[i - 1] + v[i]) / 2)


@torch.no_grad()
def calibrate_thresholds_(model: ResNet, x: torch.Tensor, remain: float,
                          window: float = 0.05) -> ResNet:
    """Set every gate's threshold so that it keeps about ``remain`` of its channels on batch ``x``.

    One forward pass: a hook on each gate sets its threshold from this batch's saliency before the
    next gate runs, so gate 2 is calibrated on the tensor gate 1's final mask produces.
    ``window`` (see :func:`_robust_threshold`): 0 for an exact quantile.
    """
    def hook(gate, _inputs, _output):
        gate.threshold.fill_(_robust_threshold(gate.saliency, remain, window))
        gate.keep = gate.saliency >= gate.threshold
        return gate.saliency * gate.keep

    handles = [g.register_forward_hook(hook) for g in model.gates()]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return model


@torch.no_grad()
def calibrate_to_reduction_(model: ResNet, x: torch.Tensor, reduction_pct: float,
                            steps: int = 10, window: float = 0.0) -> float:
    """Choose one keep fraction for all gates (by bisection, starting from the uniform-keep rate of
    :func:`manidp.macs.remain_rate_for_reduction`) so that the mean MAC reduction on ``x`` is
    ``reduction_pct``; returns the measured reduction."""
    from .macs import InstanceCounter, kept_counts, remain_rate_for_reduction
    counter = InstanceCounter(model, x.shape[-1])

    def reduction(remain: float) -> float:
        calibrate_thresholds_(model, x, remain, window)
        model(x)
        return 100.0 * (1 - float(counter.count(kept_counts(model)).double().mean()) / counter.dense)

    lo, hi = 0.0, 1.0                            # reduction(lo) >= target >= reduction(hi)
    remain = remain_rate_for_reduction(model, reduction_pct, x.shape[-1])
    best = (abs(reduction(remain) - reduction_pct), remain)
    for _ in range(steps):
        r = reduction(remain)
        best = min(best, (abs(r - reduction_pct), remain))
        if r >= reduction_pct:
            lo = remain
        else:
            hi = remain
        remain = (lo + hi) / 2
    return reduction(best[1])
