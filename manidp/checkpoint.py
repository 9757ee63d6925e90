"""Self-describing checkpoints, written atomically.

A checkpoint holds everything needed to rebuild, evaluate or resume a run: architecture, whether it
is gated, number of classes, input size, model/optimizer/scheduler state, completed epochs,
thresholds, the reference loss of the complexity weight, the resolved config and the metrics so far.
"""
from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from .errors import ManidpError
from .io import atomic_write
from .models import ResNet, load_dense_state_dict

FORMAT_NAME, FORMAT_VERSION = "manidp-checkpoint", 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
# What every reader of a manidp checkpoint needs; a resumed run also needs RESUME_KEYS.
REQUIRED_KEYS = ("arch", "gated", "num_classes", "model")
RESUME_KEYS = ("optimizer", "scheduler", "epoch", "metrics")


def save(path: str | Path, **payload) -> Path:
    payload = {"format": FORMAT, **payload}
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def load(path: str | Path, require: tuple[str, ...] = ()) -> dict:
    """Load any checkpoint we accept: ours, or a bare state dict (e.g. torchvision's).

    Every problem is one line naming the file: unreadable, a newer format, a missing key (ours must
    hold REQUIRED_KEYS and ``require``), or a non-finite tensor, which would otherwise close every
    gate or poison every logit and still yield plausible-looking numbers."""
    path = Path(path)
    if not path.is_file():
        raise ManidpError(f"checkpoint {path} does not exist: check the path (or train it first)")
    try:
        with warnings.catch_warnings():   # torch warns about the pickle protocol before it fails
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise ManidpError(f"checkpoint {path} cannot be read ({type(e).__name__}); it is corrupt or "
                          f"not a PyTorch file: retrain or copy it again") from None
    if not isinstance(obj, dict):
        raise ManidpError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict or a manidp checkpoint")
    if obj.get("format") == FORMAT:
        missing = [k for k in REQUIRED_KEYS + tuple(require) if k not in obj]
        if missing:
            raise ManidpError(f"checkpoint {path} lacks the key {missing[0]!r} (a manidp checkpoint holds "
                              f"{', '.join(REQUIRED_KEYS + tuple(require))}): it is damaged or was edited; retrain it")
        ckpt = obj
    elif isinstance(obj.get("format"), str) and obj["format"].startswith(FORMAT_NAME + "/"):
        raise ManidpError(f"checkpoint {path} was written by format {obj['format'].split('/', 1)[1]} "
                          f"({obj['format']}), this manidp reads format {FORMAT_VERSION}: "
                          f"use the manidp version that wrote it, or update this one")
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        ckpt = {"format": None, "model": obj}
    elif isinstance(obj.get("state_dict"), dict):
        ckpt = {"format": None, "model": obj["state_dict"]}
    else:
        raise ManidpError(f"checkpoint {path} is neither a manidp checkpoint nor a state dict")
    _check_finite(ckpt["model"], path)
    return ckpt


def _check_finite(state: dict, path: Path) -> None:
    if not isinstance(state, dict):
        raise ManidpError(f"checkpoint {path}: its 'model' is a {type(state).__name__}, not a state dict; retrain it")
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise ManidpError(f"checkpoint {path}: tensor {name} holds {bad} non-finite value(s) (NaN or Inf) "
                                  f"of {t.numel()}; the file is damaged or its run diverged: retrain it")


def model_from_checkpoint(path: str | Path, **gate_options) -> tuple[ResNet, dict]:
    """Rebuild the exact model a manidp checkpoint describes, with its weights and thresholds."""
    ckpt = load(path)
    if ckpt["format"] != FORMAT:
        raise ManidpError(f"checkpoint {path} is a bare state dict: it does not say its architecture; "
                          f"use it as --baseline for a given --arch instead")
    from .methods import build_for_checkpoint      # the network of the method that wrote it (FBS: its gates)
    model = build_for_checkpoint(ckpt, **gate_options)
    model.input_size = ckpt.get("input_size", model.input_size)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ManidpError(f"checkpoint {path} does not match {ckpt['arch']}: {first}") from None
    return model, ckpt


def load_baseline(model: ResNet, path: str | Path) -> dict:
    """Load a dense baseline (ours or torchvision's) into ``model``; gates stay fresh."""
    ckpt = load(path)
    if ckpt["format"] == FORMAT:
        if ckpt["arch"] != model.arch:
            raise ManidpError(f"baseline {path} is a {ckpt['arch']} checkpoint, but --arch is {model.arch}: "
                              f"pass a {model.arch} baseline")
        if ckpt.get("gated"):
            raise ManidpError(f"baseline {path} is already a gated (pruned) model: pass a dense baseline")
    load_dense_state_dict(model, ckpt["model"], source=f"baseline {path}")
    return ckpt
