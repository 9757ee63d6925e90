"""Training: a dense baseline, or ManiDP (reference section 6), FBS or FPGM from a dense baseline.

The recipe, top to bottom (:func:`run`); what each pruning method plugs in is in
``manidp/methods/base.py`` (build, target, begin, start_epoch, loss, end_epoch, deployable):
  1. build the data loaders and the model (gated for ManiDP, loading the dense baseline);
  2. SGD with Nesterov momentum, weight decay on the network but not on the gates, and a cosine
     learning rate decayed per iteration to 0;
  3. resume from ``out/checkpoint.pt`` if it exists (same config required);
  4. ManiDP only: the reference loss of the complexity weight is the mean CE of an eval-mode pass
     over the training set before the first epoch, then the previous epoch's mean training CE;
  5. every epoch: train, then (ManiDP) set thresholds from the epoch's saliencies by the cosine
     remain-rate schedule, evaluate, write metrics and an atomic checkpoint;
  6. evaluate the final model with its final thresholds and write ``metrics.json``.

Every random choice derives from the seed and the epoch number, so a resumed run ends exactly where
an uninterrupted one does (on CPU).

Under ``torchrun --nproc_per_node N`` the same function trains with DistributedDataParallel: each
process takes its part of every global batch of ``--batch-size`` and everything the method reads
(BatchNorm statistics, losses, saliency sums, reference loss, evaluation) is global, so N processes
compute one process's run up to rounding (to 1e-12 in float64; ``manidp/distributed.py``). Only rank 0
writes files, prints and shows progress bars; every process resumes from the same checkpoint.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt_io
from . import distributed, fast_step, runfolder
from .errors import ManidpError
from .evaluate import _amp_dtype, evaluate
from .io import write_json, write_text
from .calibrate import TOLERANCE_PT, calibrate, mac_target, reestimate_batchnorm
from .gate_stats import GateStats, term_grad_norms
from .losses import LossOptions, loss_terms, manidp_loss
from .macs import dense_macs
from .methods import get_method
from .models import ResNet
from .progress import RunClock, progress
from .provenance import environment
from .schedule import reset_statistics, update_thresholds


@dataclass
class TrainConfig:
    """Every option of a run; the command line exposes each with the same name and default."""
    method: str = "baseline"          # baseline | manidp | fbs | fpgm (manidp/methods/)
    arch: str = "resnet20"
    dataset: str = "cifar10"          # cifar10 | cifar100 | imagenet
    data: str = ""                    # dataset path (folder or archive)
    out: str = ""                     # run folder: checkpoint.pt, metrics.json, history.jsonl, config.json, env.json
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1                   # peak learning rate (reference: 0.05 for ManiDP)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4        # on the network; gates always get 0
    grad_clip: float | None = None    # clip the global gradient norm to this (off, as in the official code)
    seed: int = 0
    device: str = "auto"
    amp: bool = False                 # mixed precision (bfloat16 on CPU, float16 + GradScaler on CUDA)
    amp_dtype: str = "auto"           # auto (as above) | bfloat16 | float16 (always with GradScaler)
    step: str = "eager"               # eager | compile | graph: how a training step runs (manidp/fast_step.py)
    channels_last: bool = False
    workers: int = 4                  # image-folder loader processes (ImageNet only)
    image_size: int | None = None     # input resolution (default: the architecture's)
    limit_train: int | None = None    # use only the first N training instances (smoke runs)
    limit_test: int | None = None
    eval_every: int = 1               # evaluate on the test set every N epochs (and always at the end)
    cache_dir: str | None = None
    download: bool = False            # allow torchvision's CIFAR download (never in tests/CI)
    # pruning methods (manidp, fbs, fpgm)
    baseline: str | None = None       # dense checkpoint to start from (ours or a torchvision state dict)
    remain_rate: float | None = None  # target remain rate t; or give target_reduction
    target_reduction: float | None = None  # target MAC reduction in %, turned into t by macs.remain_rate_for_reduction
    gate_init: str = "zero"           # FC2 weights of fresh gates: zero (ours) or kaiming (official); see models/gate.py
    fine_tune_epochs: int = 0         # ManiDP: last epochs trained at the target remain rate (0: official schedule)
    first_threshold_epoch: int = 0    # ManiDP: thresholds are first set after this 0-based epoch (official code: 1)
    calibrate_macs: bool = True       # ManiDP: bisect the target thresholds onto the MAC target (manidp/calibrate.py); False: official rule
    calibration_instances: int = 1024 # ManiDP: training instances the calibration measures MACs on
    bn_reestimate: int = 0            # pruning methods: after the last epoch, re-estimate BatchNorm statistics on N training instances (0: off)
    losses: LossOptions = field(default_factory=LossOptions)   # ManiDP's loss options
    method_options: dict = field(default_factory=dict)        # the other methods' own options, e.g. {"lambda_l1": 1e-8}

    def validate(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ManidpError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        if not self.lr > 0:
            raise ManidpError(f"--lr must be > 0 (got {self.lr})")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ManidpError(f"--grad-clip must be > 0 (got {self.grad_clip}); leave it out to switch clipping off")
        if self.weight_decay < 0:
            raise ManidpError(f"--weight-decay must be >= 0 (got {self.weight_decay})")
        if self.calibration_instances < 1:
            raise ManidpError(f"--calibration-instances must be >= 1 (got {self.calibration_instances})")
        if self.bn_reestimate < 0:
            raise ManidpError(f"--bn-reestimate must be >= 0 instances, 0 for off (got {self.bn_reestimate})")
        if not 0 <= self.fine_tune_epochs < self.epochs:
            raise ManidpError(f"--fine-tune-epochs must be >= 0 and smaller than --epochs {self.epochs} "
                              f"(got {self.fine_tune_epochs}): the schedule needs at least one epoch")
        if not 0 <= self.first_threshold_epoch < self.epochs - self.fine_tune_epochs:
            raise ManidpError(f"--first-threshold-epoch must be >= 0 and before the epoch that reaches the target "
                              f"({self.epochs - self.fine_tune_epochs - 1}) (got {self.first_threshold_epoch})")
        fast_step.check_step_mode(self.step, self.amp, self.amp_dtype, None, 1)
        method = get_method(self.method)
        if not self.out:
            raise ManidpError("--out is required: the run folder for checkpoint and metrics")
        method.validate(self)         # remain rate or MAC target, and the method's own options

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["losses"] = LossOptions(**d.get("losses", {}))
        return cls(**d)


# Options whose change makes a checkpoint meaningless for resuming; the rest (device, workers...) may change.
_RESUME_KEYS = ("method", "arch", "dataset", "epochs", "batch_size", "lr", "momentum", "nesterov",
                "weight_decay", "grad_clip", "seed", "limit_train", "remain_rate", "target_reduction", "losses", "image_size",
                "gate_init", "method_options", "fine_tune_epochs", "first_threshold_epoch", "calibrate_macs", "calibration_instances",
                "bn_reestimate")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: ResNet, cfg: TrainConfig) -> torch.optim.SGD:
    gates = [p for n, p in model.named_parameters() if ".gate" in n]
    net = [p for n, p in model.named_parameters() if ".gate" not in n]
    groups = [{"params": net, "weight_decay": cfg.weight_decay}]
    if gates:
        groups.append({"params": gates, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def make_scheduler(optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay from the peak lr to 0, stepped every iteration."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))


@torch.no_grad()
def reference_loss_pass(model: ResNet, loader, device, cfg: TrainConfig, show_progress: bool = True) -> float:
    """Mean CE of an eval-mode pass over the training set (the reference loss before epoch 0)."""
    model.eval()
    loader.set_epoch(0)
    total, n = 0.0, 0
    bar = progress(_instances(loader), "reference loss", disable=not show_progress)
    for x, y in loader:
        with torch.autocast(device.type, enabled=cfg.amp, dtype=_amp_dtype(device, cfg.amp_dtype)):
            logits = model(_prepare(x, cfg))
        total += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        n += y.numel()
        bar.update(y.numel())
    bar.close()
    total, n = distributed.sum_over_processes([total, n])   # the whole training set's CE
    return total / max(n, 1)


def _instances(loader) -> int | None:
    """Instances this process sees per epoch (its shard), for its progress bar."""
    return getattr(loader, "shard_samples", getattr(loader, "num_samples", None))


def _prepare(x: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x


def train_one_epoch(model, loader, optimizer, scheduler, scaler, device, cfg: TrainConfig,
                    epoch: int, reference_loss: float | None, ckpt_path: Path, show_progress: bool = True,
                    runner: fast_step.StepRunner | None = None) -> dict:
    """One epoch. ``model`` is the network, or its DistributedDataParallel wrapper under torchrun:
    then each step's loss is this process's share of the global-batch loss (``distributed.py``).
    With ``runner`` (--step compile or graph), its steps instead (``fast_step.py``)."""
    net = getattr(model, "module", model)
    many = distributed.size() > 1
    model.train()
    loader.set_epoch(epoch)
    reset_statistics(net)
    sums = {"ce": 0.0, "sparse": 0.0, "sim": 0.0, "correct": 0, "n": 0, "steps": 0}
    gate_stats, probe = GateStats(net), {}
    bar = progress(_instances(loader), f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not show_progress)
    if runner is not None:
        stats = fast_step.train_epoch(runner, loader, scheduler, epoch, reference_loss, ckpt_path, bar)
        bar.close()
        return stats
    totals = distributed.batch_sizes(loader.num_samples, loader.batch_size) if many else None
    for step, (x, y) in enumerate(loader):
        with torch.autocast(device.type, enabled=cfg.amp, dtype=_amp_dtype(device, cfg.amp_dtype)):
            logits = model(_prepare(x, cfg))
        if cfg.method == "manidp":
            if many:
                loss, parts = distributed.manidp_loss(net, logits, y, reference_loss, cfg.losses, totals[step])
            else:
                loss, parts = manidp_loss(net, logits, y, reference_loss, cfg.losses)
            ce_sum = float(parts["ce"].sum())
            sums["sparse"] += float(parts["sparse"]) * y.numel()
            sums["sim"] += float(parts["sim"]) * y.numel()
        elif cfg.method != "baseline":        # fbs, fpgm, ...: the method's loss (manidp/methods/)
            loss, parts = get_method(cfg.method).loss(net, logits, y, cfg)
            if many:                          # a per-instance mean: this process's share of the global batch
                loss = loss * distributed.share(y.numel(), totals[step])
            ce_sum = float(parts["ce"].sum())
            sums["sparse"] += float(parts["sparse"]) * y.numel()
        elif many:
            loss = distributed.ce_loss(logits, y, totals[step])
            ce_sum = float(F.cross_entropy(logits.detach().float(), y, reduction="sum"))
        else:
            loss = F.cross_entropy(logits.float(), y)
            ce_sum = float(loss.detach()) * y.numel()
        if step == 0 and not many and net.gated:     # how hard each loss term pulls, once per epoch
            probe = term_grad_norms(_loss_terms(net, logits, y, loss, reference_loss, cfg), net)
        gate_stats.update(net)
        # every process stops at the same step, or the others would wait for it in backward
        finite = torch.isfinite(loss) if not many else \
            distributed.sum_over_processes([float(torch.isfinite(loss))])[0] == distributed.size()
        if not finite:
            raise ManidpError(
                f"the loss became {float(loss.detach())} in epoch {epoch + 1}, step {step + 1}; nothing was written and "
                f"the last good checkpoint ({ckpt_path if ckpt_path.exists() else 'none yet'}) is kept: "
                f"lower --lr or the loss weights (--lambda-sparse, --lambda-sim) and rerun")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        sums["ce"] += ce_sum
        sums["correct"] += int((logits.detach().argmax(1) == y).sum())
        sums["n"] += y.numel()
        sums["steps"] += 1
        bar.update(y.numel())
        bar.set_postfix(loss=f"{sums['ce'] / sums['n']:.3f}", refresh=False)
    bar.close()
    keys = ("ce", "sparse", "sim", "correct", "n")
    sums.update(zip(keys, distributed.sum_over_processes([sums[k] for k in keys])))   # the global epoch
    n = max(sums["n"], 1)
    return {"train_ce": sums["ce"] / n, "train_top1": 100.0 * sums["correct"] / n,
            "train_sparse": sums["sparse"] / n, "train_sim": sums["sim"] / n, "steps": sums["steps"],
            "lr_end": scheduler.get_last_lr()[0], "loss_grad_norms": probe, "gates": gate_stats.summary()}


def _loss_terms(net, logits, y, loss, reference_loss, cfg) -> dict[str, torch.Tensor]:
    """The step's loss split into its weighted terms (for :func:`gate_stats.term_grad_norms`):
    ManiDP's CE, lambda_1 * L_sparse and lambda_2 * L_sim; another method's CE and the rest."""
    if cfg.method == "manidp":
        t = loss_terms(net, logits, y, reference_loss, cfg.losses)
        return {"ce": t["ce"].mean(), "sparse": cfg.losses.lambda_sparse * t["sparse"],
                "sim": cfg.losses.lambda_sim * t["sim"]}
    ce = F.cross_entropy(logits.float(), y)
    return {"ce": ce, "penalty": loss - ce}


def _check_resumable(saved: dict, cfg: TrainConfig, path: Path) -> None:
    now = asdict(cfg)
    diff = [k for k in _RESUME_KEYS if saved.get(k) != now.get(k)]
    if diff:
        raise ManidpError(f"{path} was written by a run with other options ({', '.join(diff)} differ): "
                          f"use another --out, or delete the folder to start over")


def run(cfg: TrainConfig, stop_after_epoch: int | None = None, show_progress: bool = True) -> dict:
    """Train (or resume) the run described by ``cfg``; return the final metrics.

    ``stop_after_epoch`` ends the process early after that many completed epochs, as an
    interruption would (used by the resume tests). Under torchrun every process calls this.
    """
    cfg.validate()
    # one run per folder (runfolder.py); under torchrun rank 0 holds it for every process
    with runfolder.claim(cfg.out, main=distributed.env_rank() == 0), distributed.launch(cfg.device) as world:
        return _run(cfg, world, stop_after_epoch, show_progress and world.main)


def _run(cfg: TrainConfig, world: distributed.World, stop_after_epoch: int | None, show_progress: bool) -> dict:
    from .data import build_loaders
    device = world.device
    if device.type == "cpu":
        # Saliency-scaled, masked activations drift into denormal floats, which x86 CPUs compute
        # ~5x slower (a ResNet-20 ManiDP step went from 0.5 s to 2.6 s); values below 1e-38 change nothing.
        torch.set_flush_denormal(True)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    seed_everything(cfg.seed)
    train_loader, test_loader, info = build_loaders(
        cfg.dataset, cfg.data, cfg.batch_size, device=device, seed=cfg.seed, workers=cfg.workers,
        image_size=cfg.image_size, cache_dir=cfg.cache_dir, download=cfg.download,
        limit_train=cfg.limit_train, limit_test=cfg.limit_test, shard=(world.rank, world.size))
    distributed.check_shardable(info["num_train"], cfg.batch_size, world.size)
    method = get_method(cfg.method)   # its hooks: manidp/methods/base.py
    model = method.build(cfg.arch, info["num_classes"], cfg.gate_init)
    model.input_size = cfg.image_size or info.get("input_size") or model.input_size

    if method.prunes:
        if not cfg.baseline:
            raise ManidpError(f"--baseline is required for --method {cfg.method}: the dense checkpoint to prune")
        ckpt_io.load_baseline(model, cfg.baseline)
        target = method.target(model, cfg)
    else:
        target = None
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if world.size > 1:
        distributed.sync_batchnorm(model, device)
    optimizer = make_optimizer(model, cfg)
    total_steps = cfg.epochs * len(train_loader)
    scheduler = make_scheduler(optimizer, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and _amp_dtype(device, cfg.amp_dtype) == torch.float16)

    start, history, reference_loss = 0, [], None
    if ckpt_path.exists():
        saved = ckpt_io.load(ckpt_path, require=ckpt_io.RESUME_KEYS)
        _check_resumable(saved.get("config", {}), cfg, ckpt_path)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        start, history, reference_loss = saved["epoch"], saved["metrics"], saved.get("reference_loss")
    distributed.check_same(start, f"the epoch to resume from ({ckpt_path})")
    trainer = distributed.wrap(model, device) if world.size > 1 else model
    fast_step.check_step_mode(cfg.step, cfg.amp, cfg.amp_dtype, device, world.size)
    runner = fast_step.StepRunner(model, optimizer, cfg, device) if cfg.step != "eager" else None
    if world.main:
        write_json(out / "config.json", {**asdict(cfg), "resolved_remain_rate": target, "data_info": info})
        env = environment(device, cfg.seed)
        if world.size > 1:
            env["processes"] = world.size
        write_json(out / "env.json", env)

    target_macs = None
    if method.prunes:   # the MACs a run must end at: its MAC target, or what its remain rate stands for
        target_macs = (dense_macs(model) * (1 - cfg.target_reduction / 100) if cfg.target_reduction is not None
                       else method.planned_macs(model, target))
    if cfg.method == "manidp" and reference_loss is None:
        reference_loss = reference_loss_pass(model, train_loader, device, cfg, show_progress)
    if start == 0:
        method.begin(model, cfg, target)

    clock = RunClock(cfg.epochs - start, train_loader.num_samples)   # time, img/s, ETA in every epoch line
    for epoch in range(start, cfg.epochs):
        clock.start_epoch()
        started = method.start_epoch(model, epoch, cfg, target)
        stats = train_one_epoch(trainer, train_loader, optimizer, scheduler, scaler, device, cfg,
                                epoch, reference_loss, ckpt_path, show_progress, runner)
        clock.trained()
        record = {"epoch": epoch + 1, **stats, **started, **method.end_epoch(model, epoch, cfg, target)}
        if cfg.method == "manidp":
            record["reference_loss"] = reference_loss
            record.update(_set_thresholds(model, epoch, cfg, target, target_macs, train_loader))
            reference_loss = stats["train_ce"]     # next epoch's complexity reference
        if epoch + 1 == cfg.epochs and cfg.bn_reestimate and method.prunes:
            record["bn_reestimate"] = reestimate_batchnorm(model, train_loader, cfg.bn_reestimate,
                                                           epoch=cfg.epochs + 1, channels_last=cfg.channels_last)
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            ev = evaluate(method.deployable(model), test_loader, device, amp=cfg.amp, channels_last=cfg.channels_last,
                          input_size=model.input_size, show_progress=show_progress, desc="test",
                          source=f"run {out}, epoch {epoch + 1}")
            record.update(test_top1=ev["top1"], test_top5=ev["top5"], test_loss=ev["loss"],
                          macs_mean=ev["macs"]["macs_mean"], reduction_pct=ev["macs"]["reduction_pct"])
        history.append(record)
        if world.main:
            _save(ckpt_path, model, optimizer, scheduler, epoch + 1, history, reference_loss, cfg, info)
            write_text(out / "history.jsonl", "".join(json.dumps(r) + "\n" for r in history))
            print(f"{_summary_line(record)} | {clock.epoch_line()}", flush=True)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < cfg.epochs:
            return {"stopped_after_epoch": epoch + 1}

    measured = method.deployable(model)          # FPGM: the physically pruned network
    final = evaluate(measured, test_loader, device, amp=cfg.amp, channels_last=cfg.channels_last,
                     input_size=model.input_size, show_progress=show_progress, desc="final eval",
                     source=f"run {out}, final model")
    final.update(arch=cfg.arch, dataset=cfg.dataset, method=cfg.method, seed=cfg.seed,
                 epochs=cfg.epochs, thresholds=model.thresholds(), remain_rate_target=target,
                 data_source=info.get("source"))
    if method.prunes:
        final.update(mac_target(final["macs"]["reduction_pct"], 100.0 * (1 - target_macs / dense_macs(model))))
        if not final["on_target"] and world.main:
            print(f"warning: MAC reduction {final['macs']['reduction_pct']:.2f}% misses the target "
                  f"{final['target_reduction_pct']:.2f}% by more than {TOLERANCE_PT} pp (metrics.json: on_target false)",
                  flush=True)
    if world.main:
        write_json(out / "metrics.json", final)
    return final


def _set_thresholds(model: ResNet, epoch: int, cfg: TrainConfig, target: float, target_macs: float, loader) -> dict:
    """ManiDP's thresholds after epoch ``epoch``, and what goes into its history record.

    The official cosine schedule over the first E - K epochs (K = --fine-tune-epochs), then K epochs at
    the target remain rate: each update sets the k-th largest epoch-mean saliency (schedule.py). Every
    update at the target rate is calibrated onto the MAC target (calibrate.py; --no-calibrate-macs keeps
    the official rule). Frozen thresholds would not freeze the MACs: the sparsity loss keeps lowering
    saliencies, and a 2-epoch run drifted from 52.8% to 58.8% reduction in its fine-tune epoch.
    """
    span = cfg.epochs - cfg.fine_tune_epochs
    if epoch < cfg.first_threshold_epoch:        # the official code sets none after epoch 0 (main.py: epoch >= 1)
        reset_statistics(model)
        return {"remain_rate": 1.0, "thresholds": model.thresholds()}
    means: list = []
    out = {"remain_rate": update_thresholds(model, min(epoch, span - 1), span, target, means_out=means)}
    if cfg.calibrate_macs and epoch >= span - 1:
        # training rows that --limit-train left out where there are any (data.py); else training instances,
        # which the sparsity loss has made sparser than unseen ones (docs/fidelity.md)
        held = getattr(loader, "held_out", None)
        out["calibration"] = calibrate(model, held or loader, means, out["remain_rate"], target_macs,
                                       cfg.calibration_instances, model.input_size, epoch=cfg.epochs + epoch)
        out["calibration"]["sample"] = "held-out training rows" if held else "training instances"
    out["thresholds"] = model.thresholds()
    return out


def _save(path, model, optimizer, scheduler, epoch, history, reference_loss, cfg, info) -> None:
    ckpt_io.save(path, arch=model.arch, gated=model.gated, num_classes=model.num_classes,
                 input_size=model.input_size, model=model.state_dict(), optimizer=optimizer.state_dict(),
                 scheduler=scheduler.state_dict(), epoch=epoch, thresholds=model.thresholds(),
                 reference_loss=reference_loss, config=asdict(cfg), metrics=history,
                 classes=info.get("classes"))


def _summary_line(r: dict) -> str:
    parts = [f"epoch {r['epoch']}", f"train CE {r['train_ce']:.4f}", f"train top-1 {r['train_top1']:.2f}%"]
    if "test_top1" in r:
        parts += [f"test top-1 {r['test_top1']:.2f}%", f"MAC reduction {r['reduction_pct']:.1f}%"]
    if "remain_rate" in r:
        parts.append(f"remain rate {r['remain_rate']:.3f}")
    return " | ".join(parts)
