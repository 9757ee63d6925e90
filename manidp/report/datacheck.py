"""Is the dataset there? Checked once per dataset before any training starts.

Every failure is one line that names the config key to set, e.g.
``data.cifar10.path: /data/cifar10 does not exist; set data.cifar10.path ...``.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import ManidpError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def check_dataset(dataset: str, path: str | None, key: str, download: bool = False,
                  cache_dir: str | None = None) -> dict:
    """Check that ``path`` holds ``dataset``; return a small manifest (what was found).

    ``key`` is the config key that holds ``path`` (named in every error). CIFAR is loaded once
    (which also decodes and caches a JPEG copy for the training jobs); ``download=True`` lets
    torchvision fetch the original into ``path``. An ImageNet-style folder is checked cheaply:
    ``train/`` and ``val/`` with the same class folders, each holding an image.
    """
    if not path:
        raise ManidpError(f"{key} is not set: set {key} in the config to the {dataset} folder or archive")
    p = Path(path).expanduser()
    if dataset in ("cifar10", "cifar100"):
        from ..data import load_cifar
        if not p.exists() and not download:
            raise ManidpError(f"{key}: {p} does not exist; set {key} to a cifar-10-batches-py folder or "
                              f"archive (a subset is fine) or the CIFAR-10 JPEG copy, or allow the "
                              f"download with {key.rsplit('.', 1)[0]}.download: true")
        try:
            arrays = load_cifar(p, dataset, cache_dir=cache_dir, download=download)
        except ManidpError as e:
            raise ManidpError(f"{key}: {e}") from None
        return {"dataset": dataset, "path": str(p), "source": arrays.source,
                "num_train": int(len(arrays.train_y)), "num_test": int(len(arrays.test_y)),
                "classes": list(arrays.classes)}
    if dataset == "imagenet":
        if not p.is_dir():
            raise ManidpError(f"{key}: {p} is not a folder; set {key} to an ImageNet folder holding "
                              f"train/<class>/*.JPEG and val/<class>/*.JPEG")
        classes = {}
        for split in ("train", "val"):
            d = p / split
            if not d.is_dir():
                raise ManidpError(f"{key}: {d} is missing; {key} must hold train/ and val/ folders of class folders")
            names = sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))
            if not names:
                raise ManidpError(f"{key}: {d} holds no class folders")
            for name in names[:1] + names[-1:]:  # cheap: first and last class must hold an image
                if not any(e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES) for e in os.scandir(d / name)):
                    raise ManidpError(f"{key}: {d / name} holds no images")
            classes[split] = names
        if classes["train"] != classes["val"]:
            raise ManidpError(f"{key}: {p}/train and {p}/val hold different class folders")
        synthetic = (p / "SYNTHETIC.txt").is_file()
        return {"dataset": dataset, "path": str(p), "num_classes": len(classes["train"]),
                "source": ("synthetic " if synthetic else "") + f"image folder {p}", "synthetic": synthetic}
    raise ManidpError(f"dataset {dataset!r} is unknown: use cifar10 or imagenet")
