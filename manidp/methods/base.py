"""What a pruning method plugs into the shared training loop (``manidp/train.py``).

Every method runs in the same harness: the same data, baseline checkpoint, optimizer, cosine
learning rate, epochs, checkpoints, resume, evaluation and MAC counter (``manidp/macs.py``). A
method only says which network it trains, how a target MAC reduction becomes its remain rate, what
its loss is, what happens at the start and end of every epoch, and which network is measured.

Hooks are called in this order by :func:`manidp.train.run`::

    model = method.build(arch, num_classes, gate_init)  # plain, gated, or with the method's gates
    load the dense baseline (if method.prunes)
    target = method.target(model, cfg)                # remain rate in (0, 1]
    method.begin(model, cfg, target)                  # once, before the first epoch (not on resume)
    for each epoch e:
        method.start_epoch(model, e, cfg, target)
        ... steps with method.loss(model, logits, y, cfg) ...
        record.update(method.end_epoch(model, e, cfg, target))
        evaluate method.deployable(model)
    evaluate method.deployable(model) -> metrics.json

``manidp evaluate`` rebuilds the trained network with :meth:`Method.build` from the checkpoint's
config and measures :meth:`Method.deployable` of it, so a checkpoint is always measured the way its
run measured it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ManidpError
from ..macs import kept_channels  # noqa: F401 (re-exported: methods.kept_channels)
from ..models import ResNet, build_model
from ..schedule import check_remain_rate


class Method:
    """Defaults: a plain network trained with cross-entropy, measured as it is."""

    name = "baseline"
    prunes = False            # starts from a dense baseline and needs a remain rate or MAC target
    summary = "dense network"

    # -- options ------------------------------------------------------------------------------
    def add_arguments(self, group) -> None:
        """Method-only options of ``manidp prune``; their values go to ``cfg.method_options``."""

    def options_from_args(self, args) -> dict:
        return {}

    def default_options(self) -> dict:
        return {}

    def options(self, cfg) -> dict:
        """This method's options of ``cfg``, defaults filled in."""
        return {**self.default_options(), **(cfg.method_options or {})}

    def validate(self, cfg) -> None:
        """One-line :class:`ManidpError` for a bad option (called by ``TrainConfig.validate``)."""
        unknown = sorted(set(cfg.method_options or {}) - set(self.default_options()))
        if unknown:
            raise ManidpError(f"option {unknown[0]!r} does not apply to --method {self.name}")
        if self.prunes:
            if (cfg.remain_rate is None) == (cfg.target_reduction is None):
                raise ManidpError("give exactly one of --remain-rate and --target-reduction")
            if cfg.remain_rate is not None:
                check_remain_rate(cfg.remain_rate)

    # -- network ------------------------------------------------------------------------------
    def build(self, arch: str, num_classes: int | None, gate_init: str = "zero") -> ResNet:
        """The network this method trains, before any weights are loaded."""
        return build_model(arch, num_classes=num_classes)

    def target(self, model: ResNet, cfg) -> float | None:
        return None

    def planned_macs(self, model: ResNet, rate: float) -> int:
        """Backbone MACs a remain rate stands for (the MAC target of a ``--remain-rate`` run): every
        gate keeping ceil(rate * C) channels."""
        from ..macs import uniform_keep_macs
        return uniform_keep_macs(model, rate)

    def deployable(self, model: ResNet) -> ResNet:
        """The network whose accuracy and MACs are reported (default: the trained one)."""
        return model

    # -- training -----------------------------------------------------------------------------
    def begin(self, model: ResNet, cfg, target) -> None:
        """Once, after the baseline is loaded and before the first epoch of a fresh run."""

    def start_epoch(self, model: ResNet, epoch: int, cfg, target) -> dict:
        return {}

    def loss(self, model: ResNet, logits: torch.Tensor, targets: torch.Tensor, cfg):
        """(loss, parts): parts["ce"] per-instance cross-entropy, parts["sparse"] the penalty."""
        ce = F.cross_entropy(logits.float(), targets, reduction="none")
        return ce.mean(), {"ce": ce.detach(), "sparse": logits.new_zeros(())}

    @torch.no_grad()
    def end_epoch(self, model: ResNet, epoch: int, cfg, target) -> dict:
        """After the epoch's last step; returns what to add to the epoch's history record."""
        return {}
