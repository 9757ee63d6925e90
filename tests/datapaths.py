"""Where the tests find the real CIFAR-10 data (never downloaded), first match wins:

1. ``$MANIDP_DATA`` (a folder holding ``cifar10-mini.tgz`` and/or ``cifar10-jpeg.tar.gz``);
2. ``../shared/data/`` beside the checkout (this project's machines);
3. ``resources/data/`` in the checkout, where ``python -m manidp.subset cifar-10-python.tar.gz`` writes
   the subset built from a full CIFAR-10 download (README, "Set up and test").
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = [Path(p).expanduser() for p in [os.environ.get("MANIDP_DATA")] if p] + [
    ROOT.parent / "shared" / "data", ROOT / "resources" / "data"]


def data_file(name: str) -> Path:
    """The first folder's ``name`` that exists, else the first candidate (named in skip reasons)."""
    return next((f / name for f in FOLDERS if (f / name).is_file()), FOLDERS[0] / name)


MINI = data_file("cifar10-mini.tgz")
JPEG = data_file("cifar10-jpeg.tar.gz")
SEARCHED = ", ".join(str(f) for f in FOLDERS)
