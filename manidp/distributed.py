"""Multi-process training (``torchrun --nproc_per_node N``): one process per GPU, or per CPU share.

Every process trains the same model on its part of each global batch under DistributedDataParallel
(NCCL on GPUs, gloo on CPU). ``--batch-size`` stays the global batch: process r takes the r-th
contiguous part of every global batch (:func:`shard_sizes`; the loaders in ``data.py`` draw the shuffle
order and the augmentation of the whole global batch and keep their part), so N processes see
exactly the instances, crops and flips of one process at the same ``--batch-size``.

What makes N processes compute what one process computes (the test: ``tests/test_distributed.py``):

- BatchNorm normalises over the global batch (:func:`sync_batchnorm`): torch's SyncBatchNorm on CUDA;
  on CPU, where torch's runs only on accelerators, :class:`SyncBatchNorm2d`.
- Loss scaling: DDP averages gradients over processes, so each process's loss is its share of the
  global-batch mean (:func:`manidp_loss`, :func:`ce_loss`) times the number of processes.
- The similarity loss is computed over the global batch: the pooled features and saliencies of all
  gates are gathered (one all_gather per step, B x 2 x sum(C) floats) and every process evaluates the
  full B x B similarity matrices; each process back-propagates only into its own rows.
- Statistics are summed over processes: the per-channel saliency sums behind the thresholds
  (``schedule.update_thresholds``), the epoch's mean CE behind the complexity weight, the reference
  loss before epoch 0, and every evaluation number (``evaluate``: counts, loss and per-instance MACs).

One process (no torchrun, or ``--nproc_per_node 1``) never touches any of this: every helper here is
the identity when no process group is running, and ``train.run`` takes its single-process path.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .errors import ManidpError, check


@dataclass(frozen=True)
class World:
    """This process's place among the training processes, and the device it runs on."""
    rank: int
    size: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Only the main process (rank 0) writes checkpoints, metrics, logs and progress bars."""
        return self.rank == 0


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def env_world_size() -> int:
    """Processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


@contextlib.contextmanager
def launch(device_option: str = "auto") -> Iterator[World]:
    """Join the process group torchrun describes (environment: RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT) for the duration of the block; one process gets ``World(0, 1, device)``.

    Under torchrun ``--device auto``/``cuda`` becomes ``cuda:LOCAL_RANK`` (NCCL); ``cpu`` uses gloo.
    A process group that is already running (started by the caller) is joined and left running.
    """
    from .provenance import resolve_device
    world_size = env_world_size()
    if world_size <= 1:
        yield World(0, 1, resolve_device(device_option))
        return
    device = _process_device(device_option)
    owner = not dist.is_initialized()
    if owner:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30),
                                device_id=device if device.type == "cuda" else None)
    try:
        yield World(dist.get_rank(), dist.get_world_size(), device)
        dist.barrier()              # nobody goes on (or reads the run folder) while rank 0 still writes
    finally:
        if owner:
            dist.destroy_process_group()


def _process_device(option: str) -> torch.device:
    from .provenance import resolve_device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if option == "auto":
        option = "cuda" if torch.cuda.is_available() else "cpu"
    device = resolve_device(option)
    if device.type == "cuda":
        check(device.index is None,
              f"--device {option} names one GPU, but torchrun starts one process per GPU: use --device cuda "
              f"(process r takes cuda:LOCAL_RANK) and choose GPUs with CUDA_VISIBLE_DEVICES")
        check(local < torch.cuda.device_count(),
              f"torchrun started process {local} on a machine with {torch.cuda.device_count()} GPU(s): "
              f"--nproc_per_node must not exceed the number of GPUs")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    return device


# --------------------------------------------------------------------------- sharding the global batch

def shard_sizes(n: int, world: int) -> list[int]:
    """Instances of each process in a global batch of ``n``: contiguous parts, sizes differing by at
    most one (``torch.tensor_split``'s rule), process r takes part r."""
    return [n // world + (1 if r < n % world else 0) for r in range(world)]


def shard_slice(n: int, rank: int, world: int) -> slice:
    sizes = shard_sizes(n, world)
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def batch_sizes(num_samples: int, batch_size: int, drop_last: bool = False) -> list[int]:
    """The sizes of the global batches of one epoch."""
    full, rest = divmod(num_samples, batch_size)
    return [batch_size] * full + ([rest] if rest and not drop_last else [])


def check_shardable(num_samples: int, batch_size: int, world: int) -> None:
    """Every process must get at least one instance of every training batch (DDP steps together)."""
    if world <= 1:
        return
    check(batch_size % world == 0,
          f"--batch-size {batch_size} is the global batch and must be divisible by the {world} processes "
          f"(torchrun --nproc_per_node); use e.g. --batch-size {max(world, batch_size // world * world)}")
    rest = num_samples % batch_size
    check(rest == 0 or rest >= world,
          f"the last training batch holds {rest} instance(s) ({num_samples} % --batch-size {batch_size}), "
          f"fewer than the {world} processes; change --batch-size or --limit-train")


# --------------------------------------------------------------------------- collectives

def _comm_device(t: torch.Tensor) -> torch.device:
    # NCCL moves only GPU tensors; gloo only CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over all processes (``t`` itself in one process), on ``t``'s device."""
    if not active():
        return t
    buf = t.detach().to(_comm_device(t), copy=True)
    dist.all_reduce(buf)
    return buf.to(t.device)


def sum_over_processes(values: list[float]) -> list[float]:
    """Python numbers summed over processes in float64 (counts stay exact below 2**53)."""
    if not active():
        return list(values)
    return all_reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist()


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's ``t`` (rows may differ in number) in rank order; no gradient."""
    if not active():
        return t
    dev = _comm_device(t)
    counts = all_reduce_sum(F.one_hot(torch.tensor(rank()), size()) * len(t)).tolist()
    pad = max(counts)
    buf = torch.zeros((pad,) + tuple(t.shape[1:]), dtype=t.dtype, device=dev)
    buf[:len(t)] = t.detach().to(dev)
    out = torch.empty((size() * pad,) + tuple(t.shape[1:]), dtype=t.dtype, device=dev)
    dist.all_gather_single(out, buf)
    return torch.cat([out[r * pad:r * pad + c] for r, c in enumerate(counts)]).to(t.device)


class _SumOverProcesses(torch.autograd.Function):
    """all_reduce(SUM) with its gradient: the gradient of a sum over processes is the sum of the
    processes' gradients (each process's loss reads the same reduced value)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(grad)


class _GatherRows(torch.autograd.Function):
    """All processes' rows (sizes known to every process); backward keeps this process's rows.

    Every process evaluates the same function of the gathered rows, so the gradient for process r's
    rows is already complete on process r: no communication in backward. The caller weights the
    result by the number of processes, which DDP's gradient averaging undoes.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], me: int) -> torch.Tensor:
        ctx.part = shard_slice(sum(sizes), me, len(sizes))
        dev, pad = _comm_device(x), max(sizes)
        buf = x.new_zeros((pad,) + tuple(x.shape[1:]), device=dev)
        buf[:len(x)] = x.to(dev)
        out = x.new_empty((len(sizes) * pad,) + tuple(x.shape[1:]), device=dev)
        dist.all_gather_single(out, buf)
        return torch.cat([out[r * pad:r * pad + c] for r, c in enumerate(sizes)]).to(x.device)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad[ctx.part], None, None


# --------------------------------------------------------------------------- losses over the global batch

def share(local: int, total: int) -> float:
    """Weight of a process's local mean in the global-batch mean, times the number of processes
    (DDP divides the summed gradients by it)."""
    return size() * local / total


def ce_loss(logits: torch.Tensor, targets: torch.Tensor, total: int) -> torch.Tensor:
    """Mean cross-entropy over the global batch of ``total`` instances, as this process's loss."""
    return F.cross_entropy(logits.float(), targets) * share(targets.numel(), total)


def manidp_loss(net, logits: torch.Tensor, targets: torch.Tensor, reference_loss: float, opts,
                total: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``losses.manidp_loss`` over the global batch of ``total`` instances, as this process's loss.

    CE and the sparsity loss are per-instance means, so each process contributes its share. The
    similarity loss compares every pair of instances of the global batch (as one process at the
    same batch size, and as the official code over its whole DataParallel batch): it is computed
    from the gathered features and saliencies. Returned parts: per-instance CE and weights (local),
    sparse (local mean), sim (global, the same on every process).
    """
    from .losses import detached, loss_terms
    t = loss_terms(net, logits, targets, reference_loss, opts,
                   similarity=lambda m: global_similarity_loss(m, total, opts.detach_features))
    loss = share(len(t["ce"]), total) * (t["ce"].mean() + opts.lambda_sparse * t["sparse"]) \
        + size() * opts.lambda_sim * t["sim"]
    return loss, detached(t)


def global_similarity_loss(net, total: int, detach_features: bool = False) -> torch.Tensor:
    """sum over gates of ||T - R||_F^2 / B^2 over the global batch of B = ``total`` instances.

    All gates' pooled features and saliencies travel in one all_gather.
    """
    from .losses import grouped_alignment_loss
    gates = net.gates()
    parts = [t.float() for g in gates for t in ((g.feature.detach() if detach_features else g.feature), g.saliency)]
    widths = [p.shape[1] for p in parts]
    rows = _GatherRows.apply(torch.cat(parts, dim=1), shard_sizes(total, size()), rank())
    cols = rows.split(widths, dim=1)
    return grouped_alignment_loss([(cols[2 * i], cols[2 * i + 1]) for i in range(len(gates))])


# --------------------------------------------------------------------------- BatchNorm over the global batch

class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics (and running estimates) are those of the global
    batch; for CPU processes (gloo), where torch's SyncBatchNorm does not run.

    Two passes, each one differentiable all_reduce of float64 per-channel sums: the mean, then the
    sum of squares of the centred input. The one-pass E[x^2] - E[x]^2 agrees in the forward pass but
    its gradient cancels in float32 when |mean| >> std (8e-4 relative error at mean/std = 500,
    tests/test_distributed.py). Same parameters and buffers as BatchNorm2d, so checkpoints do not
    change; evaluation mode and a single process use BatchNorm2d's forward unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        c, channel = x.shape[1], (None, slice(None), None, None)
        count = x.new_full((1,), x.numel() // c, dtype=torch.float64)
        sums = _SumOverProcesses.apply(torch.cat([x.sum((0, 2, 3), dtype=torch.float64), count]))
        n = sums[-1]
        mean = sums[:c] / n
        centred = x - mean.to(x.dtype)[channel]
        var = _SumOverProcesses.apply(centred.square().sum((0, 2, 3), dtype=torch.float64)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_mean.lerp_(mean.to(self.running_mean), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var), momentum)
        y = centred * (var + self.eps).rsqrt().to(x.dtype)[channel]
        if self.affine:
            y = y * self.weight.to(x.dtype)[channel] + self.bias.to(x.dtype)[channel]
        return y


def sync_batchnorm(net: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm of ``net`` normalise over the global batch (in place; same state dict)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    for m in net.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = SyncBatchNorm2d      # a subclass without state of its own: a safe swap
    return net


def wrap(net: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``net`` (whose BatchNorms are already synchronised).

    ``forward_sync_buffers=False``: DDP would otherwise overwrite every process's buffers with rank
    0's at each forward, including the gates' per-process saliency sums; BatchNorm running estimates
    come from the global statistics and thresholds from summed saliencies, so they agree without it.
    """
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                   forward_sync_buffers=False)


def check_same(value: int, what: str) -> None:
    """Refuse to go on when the processes disagree on ``value`` (e.g. the epoch they resume from)."""
    if not active():
        return
    values = all_gather_rows(torch.tensor([value], dtype=torch.int64)).tolist()
    if len(set(values)) > 1:
        raise ManidpError(f"the processes disagree on {what} ({values}): every process must read the same "
                          f"--out folder (a file system they all share)")
