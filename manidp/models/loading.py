"""Loading a dense (plain) checkpoint into a plain or gated model.

A plain state dict (ours, or torchvision's ``resnet18``/``resnet34``) loads into the gated model
with the gates left fresh; every other mismatch is an error that names the keys, because a
silently half-loaded backbone would make every later number meaningless.
"""
from __future__ import annotations

import torch

from ..errors import ManidpError
from .resnet import ResNet

_GATE_KEY = (".gate1.", ".gate2.")


def _short(keys: list[str], n: int = 6) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_dense_state_dict(model: ResNet, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``state`` into ``model``; gate parameters may be absent from ``state``, nothing else may."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state and not any(g in k for g in _GATE_KEY)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        raise ManidpError(f"{source} does not fit {model.arch}: {'; '.join(parts)}; "
                          f"pass a checkpoint of the same architecture")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if wrong:
        raise ManidpError(f"{source} does not fit {model.arch} ({model.num_classes} classes): "
                          f"shape mismatch in {_short(wrong, 3)}; pass a checkpoint of the same "
                          f"architecture and number of classes")
    model.load_state_dict(state, strict=False)
