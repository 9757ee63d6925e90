"""The pruning methods, by name: the value of ``manidp prune --method`` and of the DAG's method wildcard.

=========  =======  ==============================================================================
name       kind     module
=========  =======  ==============================================================================
baseline   dense    ``base.py`` (``manidp train-baseline``)
manidp     dynamic  ``manidp.py`` (Tang et al., CVPR 2021); ablations are its loss options
fbs        dynamic  ``fbs.py`` (Gao et al., ICLR 2019)
fpgm       static   ``fpgm.py`` (He et al., CVPR 2019), physically pruned by ``surgery.py``
=========  =======  ==============================================================================

Adding a method: write one module with a :class:`~manidp.methods.base.Method` subclass (its hooks
are documented in ``base.py``), add an instance to ``METHODS`` below, and add a config block for it
(``docs/methods.md``). The training loop, checkpoints, resume, evaluation and MAC counting are
shared and need no change.
"""
from __future__ import annotations

from ..errors import ManidpError
from ..models import ResNet, build_model
from .base import Method, kept_channels
from .fbs import FBS
from .fpgm import FPGM
from .manidp import ManiDP

METHODS: dict[str, Method] = {m.name: m for m in (Method(), ManiDP(), FBS(), FPGM())}
PRUNING = tuple(name for name, m in METHODS.items() if m.prunes)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ManidpError(f"--method '{name}' is unknown: use one of {', '.join(METHODS)}")
    return METHODS[name]


def checkpoint_method(ckpt: dict) -> Method:
    """The method that wrote a manidp checkpoint (older and imported ones: by ``gated``)."""
    name = (ckpt.get("config") or {}).get("method")
    if name is None:
        name = "manidp" if ckpt.get("gated") else "baseline"
    return get_method(name)


def build_for_checkpoint(ckpt: dict, **gate_options) -> ResNet:
    """The network a checkpoint's state dict fits, before loading it."""
    method = checkpoint_method(ckpt)
    if method.name in ("baseline", "manidp"):
        return build_model(ckpt["arch"], num_classes=ckpt["num_classes"], gated=ckpt["gated"], **gate_options)
    gate_init = (ckpt.get("config") or {}).get("gate_init", "zero")
    return method.build(ckpt["arch"], ckpt["num_classes"], gate_init)


__all__ = ["METHODS", "PRUNING", "Method", "build_for_checkpoint", "checkpoint_method", "get_method",
           "kept_channels", "method_options_from_args"]


# ManiDP's own options on the command line (cli.py), by LossOptions field; all default to LossOptions().
_MANIDP_FLAGS = {"lambda_sparse": "--lambda-sparse", "lambda_sim": "--lambda-sim", "gamma": "--gamma",
                 "complexity_scale": "--complexity-scale", "detach_weight": "--no-detach-weight",
                 "complexity_weighting": "--no-complexity-weighting", "detach_features": "--detach-features"}


def method_options_from_args(args, name: str) -> dict:
    """``cfg.method_options`` of ``--method name`` from parsed ``manidp prune`` arguments.

    An option that belongs to another method is a one-line error rather than silently ignored
    (ManiDP's options are detected when they differ from their defaults).
    """
    from ..losses import LossOptions
    defaults = LossOptions()
    if name not in ("manidp", "baseline"):
        for key, flag in _MANIDP_FLAGS.items():
            if getattr(args, key, getattr(defaults, key)) != getattr(defaults, key):
                raise ManidpError(f"{flag} is an option of --method manidp, not of --method {name}")
    for other in METHODS.values():
        given = other.options_from_args(args)
        if other.name != name and given:
            flag = "--" + next(iter(given)).replace("_", "-")
            raise ManidpError(f"{flag} is an option of --method {other.name}, not of --method {name}")
    return get_method(name).options_from_args(args)
