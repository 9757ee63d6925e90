"""The ManiDP channel gate (reference section 1).

A gate looks at the feature map a convolution reads, predicts one saliency per output channel of
that convolution, and keeps the channels whose saliency reaches the layer's threshold. Kept channels
are scaled by their saliency (SE-like); the rest are zeroed. The indicator carries no gradient: the
saliency itself is what the losses train.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ManidpError

# Defaults of the official code; each is a named option of Gate.
REDUCTION_BELOW = 80       # r = 1 when C_out < 80, else r = 2
REDUCTION = 2
SALIENCY_CLAMP = 1000.0    # pi = clamp(ReLU(FC2(...)), max=1000)
FC2_BIAS_INIT = 1.0        # every gate starts open
# FC2 weight initialisation. The official code draws it Kaiming-normal ("kaiming"). We default to
# "zero": every saliency then starts at exactly FC2's bias (1.0), so the freshly gated network computes
# the dense baseline it was loaded from. With Kaiming FC2 the saliencies of deep gates start in the
# hundreds (clamped at 1000) and multiply from block to block: a gated CIFAR ResNet-20 loaded from its
# baseline gives logits of ~1e4 instead of ~10 and a first loss of 70-130 (6 of 6 seeds), and has
# produced a NaN loss at the first step; one-stage pruning "from a pretrained model" then starts from a
# destroyed function. FC1 stays Kaiming-normal, so gradients reach it from the second step on.
FC2_INITS = ("zero", "kaiming")
INITIAL_THRESHOLD = -10000.0


def init_saliency_fc(fc: nn.Linear, init: str, bias: float = FC2_BIAS_INIT) -> None:
    """Initialise the FC layer that outputs saliencies: weight zero or Kaiming-normal (``--gate-init``),
    bias ``bias`` (1.0: every channel starts open)."""
    if init == "kaiming":
        nn.init.kaiming_normal_(fc.weight)
    elif init == "zero":
        nn.init.zeros_(fc.weight)
    else:
        raise ManidpError(f"--gate-init '{init}' is unknown: use one of {', '.join(FC2_INITS)}")
    nn.init.constant_(fc.bias, bias)


class Gate(nn.Module):
    """Saliency predictor for one gated convolution: GAP -> FC1 (no bias) -> ReLU -> FC2 -> ReLU -> clamp.

    Buffers: ``threshold`` (the layer's current threshold) and the epoch accumulators
    ``saliency_sum``/``saliency_count`` that the remain-rate schedule reads (reference section 3).
    After every forward, ``saliency``, ``keep`` and ``feature`` hold this batch's values for the
    losses and the MAC counter; ``feature`` is filled in by the block (the pooled, pre-mask output of
    the convolution this gate controls).
    """

    def __init__(self, c_in: int, c_out: int, reduction: int = REDUCTION,
                 reduction_below: int = REDUCTION_BELOW, clamp: float = SALIENCY_CLAMP,
                 bias_init: float = FC2_BIAS_INIT, fc2_init: str = "zero"):
        super().__init__()
        hidden = c_out if c_out < reduction_below else c_out // reduction
        self.c_in, self.hidden, self.c_out, self.clamp = c_in, hidden, c_out, clamp
        self.fc1 = nn.Linear(c_in, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, c_out, bias=True)
        nn.init.kaiming_normal_(self.fc1.weight)
        init_saliency_fc(self.fc2, fc2_init, bias_init)
        self.register_buffer("threshold", torch.tensor(INITIAL_THRESHOLD))
        self.register_buffer("saliency_sum", torch.zeros(c_out, dtype=torch.float64))
        self.register_buffer("saliency_count", torch.zeros((), dtype=torch.long))
        self.saliency: torch.Tensor | None = None
        self.keep: torch.Tensor | None = None
        self.feature: torch.Tensor | None = None

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the two FC layers, per instance (pooling is not a MAC)."""
        return self.c_in * self.hidden + self.hidden * self.c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the mask m = pi * 1[pi >= threshold], shape (B, C_out).

        ``x`` is the feature map the convolution reads (B, C_in, H, W), or that map already
        globally average-pooled (B, C_in).
        """
        pooled = global_pool(x) if x.dim() == 4 else x
        pi = F.relu(self.fc2(F.relu(self.fc1(pooled)))).clamp(max=self.clamp)
        keep = (pi >= self.threshold).detach()
        if self.training:
            with torch.no_grad():
                self.saliency_sum += pi.detach().sum(0).double()
                self.saliency_count += pi.shape[0]
        self.saliency, self.keep = pi, keep
        return pi * keep

    def reset_statistics(self) -> None:
        self.saliency_sum.zero_()
        self.saliency_count.zero_()

    def mean_saliency(self) -> torch.Tensor:
        """Per-channel mean saliency over the instances seen since the last reset."""
        return self.saliency_sum / self.saliency_count.clamp(min=1)

    def extra_repr(self) -> str:
        return f"{self.c_in} -> {self.hidden} -> {self.c_out}, clamp={self.clamp}"


@torch.no_grad()
def quantile_thresholds_(model: nn.Module, x: torch.Tensor, q: float) -> nn.Module:
    """Run ``model`` (in its current mode) on ``x``, then set each gate's threshold between its
    saliencies at the ``q``-quantile, so that a gate prunes about ``q`` of its channels: masks and
    MAC counts that are real without training (benchmarks and tests). The threshold is the midpoint
    of the two sorted saliencies around the quantile, not the quantile itself: that often is one of
    the saliencies, whose mask its last bit then decides, and two implementations of one step
    (``tests/test_fast_step.py``) round it differently on some CPUs. Every gate sees the pass with
    the old thresholds; :func:`manidp.accel.calibrate_thresholds_` instead calibrates gate by gate,
    each on the mask its predecessors now make."""
    model(x)
    for g in model.gates():
        s = g.saliency.detach().flatten().sort().values
        k = min(max(round(q * s.numel()), 1), s.numel() - 1)   # s[:k] fall below the threshold
        g.threshold.fill_(float((s[k - 1] + s[k]) / 2))
    return model


def apply_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x * mask[:, :, None, None].to(x.dtype)


class _GlobalPool(torch.autograd.Function):
    """Mean over H, W (in at least float32) whose gradient is a broadcast view, not a full tensor.

    Autograd's own mean writes a full-size gradient that is then added to the input's other
    gradient; a stride-0 view is added in the same pass.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape, ctx.dtype = x.shape, x.dtype
        return x.mean((2, 3), dtype=torch.promote_types(x.dtype, torch.float32))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        hw = ctx.shape[2] * ctx.shape[3]
        return (grad / hw).to(ctx.dtype)[:, :, None, None].expand(ctx.shape)


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """``x.mean((2, 3))`` in at least float32, with a cheap backward."""
    return _GlobalPool.apply(x)


class _MaskAndPool(torch.autograd.Function):
    """(y, m) -> (y * m per channel, mean of y over H, W), with one fused backward pass.

    Autograd of the two separate ops writes three full-size tensors in backward (the masked
    gradient, the expanded mean gradient, their sum); here the gradient of ``y`` is one multiply and an
    in-place broadcast add.
    This is where most of ManiDP's training overhead over plain training went (benchmarks/bench_train.py).
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, m: torch.Tensor):
        ctx.save_for_backward(y, m)
        pool_dtype = torch.promote_types(y.dtype, torch.float32)   # float32 under AMP
        return y * m[:, :, None, None].to(y.dtype), y.mean((2, 3), dtype=pool_dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor | None, grad_pool: torch.Tensor | None):
        y, m = ctx.saved_tensors
        grad_y = grad_m = None
        if ctx.needs_input_grad[0]:
            pool_term = None
            if grad_pool is not None:
                pool_term = (grad_pool / (y.shape[2] * y.shape[3])).to(y.dtype)[:, :, None, None]
            if grad_out is None:
                grad_y = pool_term.expand_as(y).contiguous(memory_format=torch.preserve_format)
            else:
                # mul then in-place broadcast add: measured faster on CPU than one broadcasting addcmul
                grad_y = grad_out * m[:, :, None, None].to(y.dtype)
                if pool_term is not None:
                    grad_y.add_(pool_term)
        if ctx.needs_input_grad[1] and grad_out is not None:
            # per-(instance, channel) dot product over H*W; vecdot beats einsum's batched matmul here
            grad_m = torch.linalg.vecdot(grad_out.flatten(2), y.flatten(2)).to(m.dtype)
        return grad_y, grad_m


def mask_and_pool(y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(apply_mask(y, mask), y.mean((2, 3)))`` (the pooled mean in at least float32)."""
    return _MaskAndPool.apply(y, mask)
