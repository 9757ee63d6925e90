"""Datasets and loaders.

CIFAR-10 / CIFAR-100 are small enough to hold in memory as uint8 tensors (:class:`ImageArrays`);
:class:`TensorLoader` then crops, flips and normalises whole mini-batches with tensor ops on the
target device, so a GPU is never starved by a Python data loader. ImageNet-style image folders go
through torchvision's ``ImageFolder`` and a ``DataLoader`` wrapped to behave the same way
(:class:`ImageFolderLoader`): both have ``set_epoch``, ``num_samples`` and yield ``(x, y)`` on the device.

Every random choice (shuffle order, crop offsets, flips) comes from a generator seeded by
``(seed, epoch)``, so the same seed and epoch give the same batches: a resumed run sees the same data.
Under torchrun both loaders take ``shard=(rank, processes)`` and yield this process's part of every
global batch (``shard_samples`` instances per epoch); the parts of all processes are exactly the
batches of one process.

Bad input raises :class:`~manidp.errors.ManidpError` with one line naming the file or option.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import math
import os
import pickle
import re
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .distributed import batch_sizes, shard_sizes, shard_slice
from .errors import ManidpError, check
from .io import atomic_write

DATASETS = ("cifar10", "cifar100", "imagenet")

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

# Per-channel mean/std of the training pixels (0..255 scale, divided by 255): the values the
# authors' ManiDP code uses (inherited from the pytorch-classification / FPGM code line).
CIFAR10_MEAN = tuple(v / 255 for v in (125.3, 123.0, 113.9))
CIFAR10_STD = tuple(v / 255 for v in (63.0, 62.1, 66.7))
CIFAR100_MEAN = tuple(v / 255 for v in (129.3, 124.1, 112.4))
CIFAR100_STD = tuple(v / 255 for v in (68.2, 65.4, 70.4))
# torchvision's ImageNet statistics, used by every ImageNet pretrained model.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULT_CACHE_DIR = Path("~/.cache/manidp")
_CACHE_VERSION = 1  # bump when the cache layout changes, so stale files are never read
_JPEG_SUFFIXES = (".jpg", ".jpeg")


# --------------------------------------------------------------------------- in-memory datasets

@dataclass
class ImageArrays:
    """A whole small dataset held in memory: uint8 images (N, 3, H, W) and int64 labels."""
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # human description: which dataset, full or subset, lossy copy or not, and where

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class _CifarSpec:
    """What a pickle-format copy of one CIFAR dataset looks like."""
    name: str
    title: str
    folder: str                  # cifar-10-batches-py / cifar-100-python
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    meta_key: str
    label_key: str
    num_classes: int
    full_rows: tuple[int, int]   # instances in the official train / test split
    md5: dict                    # file name -> md5 of the official file
    mean: tuple
    std: tuple


def _cifar_spec(dataset: str) -> _CifarSpec:
    check(dataset in ("cifar10", "cifar100"),
          f"--dataset {dataset!r}: not a CIFAR dataset; choose cifar10 or cifar100")
    # The md5 list comes from torchvision so it is never mistyped here.
    from torchvision.datasets import CIFAR10, CIFAR100
    tv = CIFAR10 if dataset == "cifar10" else CIFAR100
    md5 = dict(tv.train_list + tv.test_list)
    md5[tv.meta["filename"]] = tv.meta["md5"]
    ten = dataset == "cifar10"
    return _CifarSpec(
        name=dataset, title="CIFAR-10" if ten else "CIFAR-100", folder=tv.base_folder,
        train=tuple(n for n, _ in tv.train_list), test=tuple(n for n, _ in tv.test_list),
        meta=tv.meta["filename"], meta_key=tv.meta["key"],
        label_key="labels" if ten else "fine_labels", num_classes=10 if ten else 100,
        full_rows=(50000, 10000), md5=md5,
        mean=CIFAR10_MEAN if ten else CIFAR100_MEAN, std=CIFAR10_STD if ten else CIFAR100_STD)


def load_cifar(path, dataset: str = "cifar10", cache_dir=None, download: bool = False) -> ImageArrays:
    """Load CIFAR-10 / CIFAR-100 into memory from whatever form ``path`` holds (auto-detected).

    ``path`` may be the ``cifar-10-batches-py`` / ``cifar-100-python`` folder, its parent, a
    ``.tar.gz`` of it (read without extracting), or a JPEG copy: an archive or folder holding
    ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``. A full pickle copy is md5-checked against
    the originals; a copy with fewer instances is accepted and labelled "subset" in ``source``.
    JPEG copies are decoded once and cached as uint8 arrays in ``cache_dir`` (default
    ``~/.cache/manidp``). ``download=True`` fetches the original with torchvision into ``path``
    where ``path`` holds no copy yet (a copy that is there is loaded, never replaced).
    """
    spec = _cifar_spec(dataset)
    path = Path(path).expanduser()
    if download and _needs_download(path, spec):
        _download(path, spec)
    check(path.exists(), f"{path}: no such file or folder; pass the {spec.title} folder or "
                         f"archive as the data path (or allow --download)")
    cache_dir = Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE_DIR.expanduser()
    if path.is_dir():
        return _load_cifar_folder(path, spec, cache_dir)
    return _load_cifar_archive(path, spec, cache_dir)


def _needs_download(root: Path, spec: _CifarSpec) -> bool:
    """No copy at ``root`` yet: neither an archive or file, nor a folder holding the pickle folder,
    its files, or a JPEG copy's train/ folder. (The official archive alone in ``root`` counts as
    missing: torchvision then md5-checks and extracts it without downloading.)"""
    if root.is_file():
        return False
    if not root.is_dir():
        return True
    return not any((root / n).exists() for n in (spec.folder, "train", *spec.train, *spec.test))


def _download(root: Path, spec: _CifarSpec) -> None:
    from torchvision.datasets import CIFAR10, CIFAR100
    tv = CIFAR10 if spec.name == "cifar10" else CIFAR100
    try:  # downloads, md5-checks and extracts into root/<spec.folder>; a no-op when present
        tv(str(root), train=True, download=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise ManidpError(f"{root}: downloading {spec.title} failed ({_one_line(e)}); without internet, fetch "
                          f"{tv.url} (md5 {tv.tgz_md5}) elsewhere and put it at {root / tv.filename} (it is "
                          f"checked and extracted there), or pass the path of a copy you have") from None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1]}" if text else type(e).__name__


# ---- detection

def _load_cifar_folder(root: Path, spec: _CifarSpec, cache_dir: Path) -> ImageArrays:
    check(any(not p.name.startswith(".") for p in root.iterdir()),
          f"{root}: folder is empty; put the {spec.title} files ({spec.folder}/) or the JPEG "
          f"copy there, or pass the archive")
    for folder in (root / spec.folder, root):
        if any((folder / n).is_file() for n in spec.train + spec.test + (spec.meta,)):
            def read(name, folder=folder):
                f = folder / name
                return f.read_bytes() if f.is_file() else None
            return _from_pickles(read, lambda n, folder=folder: str(folder / n), spec, str(folder))
    if (root / "train").is_dir() and (root / "test").is_dir():
        return _load_jpeg_folder(root, spec, cache_dir)
    raise ManidpError(f"{root}: no {spec.title} found; expected {spec.folder}/ "
                      f"({', '.join(spec.test)}, ...) or train/ and test/ folders of class "
                      f"folders with JPEGs{_other_dataset_hint(root, spec)}")


def _other_dataset_hint(root: Path, spec: _CifarSpec) -> str:
    other = _other(spec)
    if any((d / n).is_file() for d in (root, root / other.folder) for n in other.test):
        return f" (it looks like {other.title}: pass --dataset {other.name})"
    return ""


def _load_cifar_archive(path: Path, spec: _CifarSpec, cache_dir: Path) -> ImageArrays:
    st = path.stat()
    cache = _cache_path(cache_dir, spec, ("archive", str(path.resolve()), st.st_size, st.st_mtime_ns))
    cached = _read_cache(cache, spec, path)
    if cached is not None:
        return cached
    check(tarfile.is_tarfile(path), f"{path}: not a folder or a .tar/.tar.gz archive; pass the "
                                    f"{spec.title} folder or its archive")
    files = _read_tar(path, spec)
    names = set(files)
    prefix = _pickle_prefix(names, spec)
    if prefix is not None:
        return _from_pickles(lambda n: files.get(prefix + n), lambda n: f"{path}:{prefix}{n}",
                             spec, str(path))
    images = _jpeg_members(names)
    name_of = dict(images)
    hint = ""
    if _pickle_prefix(names, _other(spec)) is not None:
        hint = f" (it looks like {_other(spec).title}: pass --dataset {_other(spec).name})"
    check(images, f"{path}: archive holds no {spec.title} ({spec.folder}/ pickles or "
                  f"train/<class>/*.jpg){hint}; pass a CIFAR archive or folder")
    arrays = _from_images([(rel, files[name]) for rel, name in images], spec, str(path),
                          lambda rel: f"{path}:{name_of[rel]}")
    _write_cache(cache, arrays)
    return arrays


def _read_tar(path: Path, spec: _CifarSpec) -> dict[str, bytes]:
    """Read the members that could belong to a CIFAR copy in one sequential pass (fast for .gz)."""
    wanted = set()
    for s in (spec, _other(spec)):
        wanted.update(s.train + s.test + (s.meta,))
    files = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                name = m.name.removeprefix("./")
                base = name.rsplit("/", 1)[-1]
                if m.isfile() and (base in wanted or base.lower().endswith(_JPEG_SUFFIXES)):
                    files[name] = tf.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ManidpError(f"{path}: archive is truncated or corrupt ({_one_line(e)}); "
                          f"download or copy it again") from None
    return files


def _pickle_prefix(names: set[str], spec: _CifarSpec) -> str | None:
    """The folder prefix ('' or 'cifar-10-batches-py/') under which the archive holds the pickles."""
    heads = {name.rpartition("/")[0] for name in names
             if name.rpartition("/")[2] in spec.train + spec.test + (spec.meta,)}
    if not heads:
        return None
    # Prefer the official folder name when the archive holds several candidates.
    head = min(heads, key=lambda h: (not h.endswith(spec.folder), len(h)))
    return head + "/" if head else ""


def _other(spec: _CifarSpec) -> _CifarSpec:
    return _cifar_spec("cifar100" if spec.name == "cifar10" else "cifar10")


# ---- pickle format

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches but refuses any global other than those that rebuild numpy arrays
    and bytes: a pickle can run arbitrary code, and a data path may come from anywhere.

    Three encodings are common and accepted: protocol 2 from Python 2 (the original files) and the
    default protocol 3/4 (``_reconstruct``/``ndarray``/``dtype``); protocol 2 written by Python 3,
    which spells bytes as ``_codecs.encode(text, 'latin1')``; protocol 5, which rebuilds arrays
    through ``_frombuffer``."""
    _multiarray = {"_reconstruct", "ndarray", "dtype", "scalar"}
    _numeric = {"_frombuffer"}

    def find_class(self, module, name):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in self._multiarray:
            return getattr(_numpy_core("multiarray"), name)
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name in self._numeric:
            return getattr(_numpy_core("numeric"), name)
        if module == "numpy" and name in self._multiarray:
            return getattr(np, name)
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        if module in ("__builtin__", "builtins") and name == "bytes":
            return _empty_bytes          # protocol 2's spelling of b""
        raise pickle.UnpicklingError(f"refusing global {module}.{name}")


def _numpy_core(name: str):
    try:  # numpy >= 2 moved numpy.core to numpy._core; read either spelling
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{name}")


def _latin1_encode(text, encoding="utf-8", errors="strict") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for bytes, and nothing else: other codecs
    (zlib, base64, ...) are refused, so the unpickler stays a plain-data reader."""
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1", errors)


def _empty_bytes(*args) -> bytes:
    if args:  # bytes(n) would allocate n bytes: only the empty call is plain data
        raise pickle.UnpicklingError("refusing builtins.bytes with arguments")
    return b""


def _unpickle(blob: bytes, where: str) -> dict:
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(blob), encoding="latin1").load()
    except Exception as e:  # any failure here means a damaged or foreign file
        raise ManidpError(f"{where}: truncated or corrupt pickle ({_one_line(e)}); "
                          f"extract or download the dataset again") from None
    check(isinstance(obj, dict), f"{where}: not a CIFAR batch (pickle holds a "
                                 f"{type(obj).__name__}, not a dict); check the data path")
    # copies re-pickled after CIFAR's own recipe, pickle.load(f, encoding="bytes"), have bytes keys
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _parse_batch(blob: bytes, where: str, spec: _CifarSpec) -> tuple[torch.Tensor, torch.Tensor]:
    d = _unpickle(blob, where)
    data, labels = d.get("data"), d.get(spec.label_key)
    check(data is not None and labels is not None,
          f"{where}: not a {spec.title} batch (needs 'data' and '{spec.label_key}'); check --dataset")
    check(isinstance(data, np.ndarray) and data.ndim == 2 and data.shape[1] == 3072,
          f"{where}: image rows must be 3072 bytes (32x32x3), found shape "
          f"{getattr(data, 'shape', type(data).__name__)}; the file is not a valid {spec.title} batch")
    check(data.dtype == np.uint8, f"{where}: image data has dtype {data.dtype}, expected uint8; "
                                  f"the file is not a valid {spec.title} batch")
    labels = np.asarray(labels)
    check(labels.ndim == 1 and len(labels) == len(data),
          f"{where}: {len(labels.reshape(-1))} labels for {len(data)} images; the file is damaged, "
          f"extract or download it again")
    check(len(labels) == 0 or (np.issubdtype(labels.dtype, np.integer)
                               and 0 <= labels.min() and labels.max() < spec.num_classes),
          f"{where}: labels must be integers in 0..{spec.num_classes - 1}; check --dataset")
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(labels.astype(np.int64))


def _from_pickles(read: Callable[[str], bytes | None], where: Callable[[str], str],
                  spec: _CifarSpec, origin: str) -> ImageArrays:
    blobs = {n: read(n) for n in spec.train + spec.test + (spec.meta,)}
    train = [n for n in spec.train if blobs[n] is not None]
    check(train, f"{where(spec.train[0])}: missing, no training batch found; "
                 f"extract or download the dataset again")
    for n in spec.test + (spec.meta,):
        check(blobs[n] is not None, f"{where(n)}: missing; extract or download the dataset again")

    meta = _unpickle(blobs[spec.meta], where(spec.meta))
    classes = meta.get(spec.meta_key)
    check(isinstance(classes, list) and len(classes) == spec.num_classes,
          f"{where(spec.meta)}: needs '{spec.meta_key}' with {spec.num_classes} names; check --dataset")
    classes = [c.decode("latin1") if isinstance(c, bytes) else str(c) for c in classes]
    title = _data_title(classes, spec, where(spec.meta), f"its '{spec.meta_key}'")

    parts = [_parse_batch(blobs[n], where(n), spec) for n in train]
    test = [_parse_batch(blobs[n], where(n), spec) for n in spec.test]
    train_x, train_y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    test_x, test_y = torch.cat([p[0] for p in test]), torch.cat([p[1] for p in test])

    # CIFAR-10 is split over five files, so a subset shows as missing files; CIFAR-100 has one
    # file per split, so there a subset shows as fewer rows. Full copies must match the originals.
    full = len(train) == len(spec.train) and (
        len(spec.train) > 1 or (len(train_y), len(test_y)) == spec.full_rows)
    if title != spec.title:             # other data in CIFAR's format: no original to check against
        source = f"{title} ({len(train_y)} train / {len(test_y)} test) from {origin}"
    elif full:
        for n, blob in blobs.items():
            got = hashlib.md5(blob, usedforsecurity=False).hexdigest()
            check(got == spec.md5[n], f"{where(n)}: md5 {got} differs from the original "
                                      f"{spec.md5[n]}; the copy is damaged, download it again")
        source = f"{spec.title} (md5 verified) from {origin}"
    else:
        source = f"{spec.title} (subset: {len(train_y)} train / {len(test_y)} test) from {origin}"
    return ImageArrays(train_x, train_y, test_x, test_y, classes, spec.mean, spec.std, source)


def _data_title(classes: list[str], spec: _CifarSpec, where: str, names: str) -> str:
    """What the data is, by its label names; one rule for both formats (docs/errors.md).

    CIFAR-10's ten names in CIFAR-10's order: CIFAR-10. Ten names none of which is CIFAR-10's:
    another ten-class dataset in CIFAR's format, accepted and named by its labels, never called
    CIFAR-10. Anything between (some of CIFAR-10's names, or all in another order) is a damaged or
    relabelled copy whose label numbers would silently differ: refused."""
    if spec.name != "cifar10" or tuple(classes) == CIFAR10_CLASSES:
        return spec.title
    shared = [c for c in classes if c in CIFAR10_CLASSES]
    check(len(classes) == len(set(classes)), f"{where}: {names} {classes} name a class twice; fix the copy")
    check(not shared, f"{where}: {names} {classes} are not CIFAR-10's {list(CIFAR10_CLASSES)} "
                      f"(in that order) but share {shared} with them, so label numbers would differ; "
                      f"fix the copy, or check the data path or --dataset")
    return f"not CIFAR-10: 10-class data in its format, labels {', '.join(classes)}"


# ---- JPEG copy

_IMAGE_RE = re.compile(r"^(?:(?P<prefix>.*)/)?(?P<split>train|test)/(?P<cls>[^/]+)/[^/]+$")


def _jpeg_members(names) -> list[tuple[str, str]]:
    """(``split/class/file``, member name) for every JPEG under the shallowest train/ test/ pair."""
    hits = []
    for name in names:
        m = _IMAGE_RE.match(name)
        if m and name.lower().endswith(_JPEG_SUFFIXES) and not name.rsplit("/", 1)[-1].startswith("."):
            hits.append((m.group("prefix") or "", name))
    if not hits:
        return []
    prefix = min((p for p, _ in hits), key=len)
    cut = len(prefix) + 1 if prefix else 0
    return sorted((name[cut:], name) for p, name in hits if p == prefix)


def _load_jpeg_folder(root: Path, spec: _CifarSpec, cache_dir: Path) -> ImageArrays:
    files = []
    for split in ("train", "test"):
        for cls in sorted(d for d in (root / split).iterdir() if d.is_dir()):
            found = [(f"{split}/{cls.name}/{e.name}", e) for e in os.scandir(cls)
                     if e.is_file() and e.name.lower().endswith(_JPEG_SUFFIXES)
                     and not e.name.startswith(".")]
            check(found, f"{cls}: class folder holds no .jpg images; remove it or fill it")
            files += found
    check(files, f"{root}: train/ and test/ hold no class folders of .jpg images; check the data path")
    files.sort()
    # The listing (names, sizes, mtimes) is the cache key: any edited or added image invalidates it.
    stats = [(rel, e.stat().st_size, e.stat().st_mtime_ns) for rel, e in files]
    cache = _cache_path(cache_dir, spec, ("folder", str(root.resolve()), stats))
    cached = _read_cache(cache, spec, root)
    if cached is not None:
        return cached
    arrays = _from_images([(rel, Path(e.path).read_bytes()) for rel, e in files], spec, str(root),
                          lambda rel: str(root / rel))
    _write_cache(cache, arrays)
    return arrays


def _from_images(items: list[tuple[str, bytes]], spec: _CifarSpec, origin: str,
                 where: Callable[[str], str]) -> ImageArrays:
    """Decode ``(split/class/file, jpeg bytes)`` pairs; labels are the sorted class-folder order."""
    classes = sorted({rel.split("/")[1] for rel, _ in items if rel.startswith("train/")})
    test_classes = sorted({rel.split("/")[1] for rel, _ in items if rel.startswith("test/")})
    check(classes == test_classes, f"{origin}: train/ and test/ hold different class folders "
                                   f"({len(classes)} vs {len(test_classes)}); fix the JPEG copy")
    check(len(classes) == spec.num_classes, f"{origin}: {len(classes)} class folders, "
                                            f"{spec.title} has {spec.num_classes}; check --dataset")
    # Sorted folder names are the label order; CIFAR-10's names sort into its own (batches.meta) order.
    title = _data_title(classes, spec, origin, "class folders")
    index = {c: i for i, c in enumerate(classes)}
    split = {}
    for name in ("train", "test"):
        part = [(rel, blob) for rel, blob in items if rel.startswith(name + "/")]
        x = _decode_jpegs(part, where)
        y = torch.tensor([index[rel.split("/")[1]] for rel, _ in part], dtype=torch.int64)
        split[name] = (x, y)
    (train_x, train_y), (test_x, test_y) = split["train"], split["test"]
    quality = _jpeg_quality(items[0][1])
    kind = f"JPEG q{quality} copy" if quality else "JPEG copy"
    if title != spec.title or (len(train_y), len(test_y)) != spec.full_rows:
        kind += f", {'' if title != spec.title else 'subset: '}{len(train_y)} train / {len(test_y)} test"
    return ImageArrays(train_x, train_y, test_x, test_y, classes, spec.mean, spec.std,
                       f"{title} ({kind}) from {origin}")


def _decode_jpegs(items: list[tuple[str, bytes]], where: Callable[[str], str]) -> torch.Tensor:
    """Decode JPEGs to a uint8 (N, 3, 32, 32) tensor, naming the first file that fails or misfits."""
    for rel, blob in items:   # torch.frombuffer cannot even wrap an empty file
        check(len(blob) > 0, f"{where(rel)}: empty file (0 bytes), not a JPEG; replace or delete the file")
    images = None
    try:
        # torchvision's batched decoder is about twice as fast as PIL here; torchvision 0.29
        # deprecates it (for TorchCodec), so it is optional and its warning is silenced.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import decode_jpeg
            images = decode_jpeg([torch.frombuffer(bytearray(blob), dtype=torch.uint8)
                                  for _, blob in items])
    except (ImportError, RuntimeError):
        pass  # decoder gone, or a bad file: PIL decodes one by one and names it
    if images is None:
        images = []
        for rel, blob in items:
            try:
                images.append(_pil_decode(blob))
            except Exception as e:  # PIL raises many types for bad files
                raise ManidpError(f"{where(rel)}: not a readable JPEG ({_one_line(e)}); "
                                  f"replace or delete the file") from None
    for (rel, _), img in zip(items, images):
        check(tuple(img.shape) == (3, 32, 32), f"{where(rel)}: image is {tuple(img.shape)} "
                                               f"(C, H, W), CIFAR needs 32x32 RGB (3, 32, 32)")
    return torch.stack(images) if images else torch.empty(0, 3, 32, 32, dtype=torch.uint8)


def _pil_decode(blob: bytes) -> torch.Tensor:
    """One image as stored (no colour conversion, so grayscale stays 1 channel): uint8 (C, H, W)."""
    from PIL import Image
    with Image.open(io.BytesIO(blob)) as im:
        a = np.array(im)
    return torch.from_numpy(a[:, :, None] if a.ndim == 2 else a).permute(2, 0, 1)


_QUALITY_TABLES: dict | None = None


def _jpeg_quality(blob: bytes) -> int | None:
    """The libjpeg quality setting an image was saved with, by matching its quantisation tables
    (so the source can say e.g. "JPEG q75 copy"); None when they match no standard setting."""
    global _QUALITY_TABLES
    from PIL import Image
    if _QUALITY_TABLES is None:
        _QUALITY_TABLES = {}
        for q in range(1, 101):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8)).save(buf, "JPEG", quality=q)
            tables = Image.open(io.BytesIO(buf.getvalue())).quantization
            _QUALITY_TABLES.setdefault(repr(sorted((k, list(v)) for k, v in tables.items())), q)
    try:
        tables = Image.open(io.BytesIO(blob)).quantization
    except Exception:
        return None
    return _QUALITY_TABLES.get(repr(sorted((k, list(v)) for k, v in tables.items())))


# ---- decoded-image cache

def _cache_path(cache_dir: Path, spec: _CifarSpec, key) -> Path:
    digest = hashlib.sha256(repr((_CACHE_VERSION, spec.name, key)).encode()).hexdigest()[:20]
    return cache_dir / f"{spec.name}-jpeg-{digest}.npz"


def _read_cache(cache: Path, spec: _CifarSpec, origin: Path) -> ImageArrays | None:
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as z:
            t = {k: torch.from_numpy(z[k]) for k in ("train_x", "train_y", "test_x", "test_y")}
            classes, source = [str(c) for c in z["classes"]], str(z["source"])
    except Exception as e:  # a damaged cache is only a lost shortcut: decode again
        warnings.warn(f"{cache}: unreadable cache ({_one_line(e)}); decoding {origin} again")
        return None
    return ImageArrays(t["train_x"], t["train_y"], t["test_x"], t["test_y"], classes,
                       spec.mean, spec.std, source)


def _write_cache(cache: Path, a: ImageArrays) -> None:
    try:
        atomic_write(cache, lambda f: np.savez(
            f, train_x=a.train_x.numpy(), train_y=a.train_y.numpy(), test_x=a.test_x.numpy(),
            test_y=a.test_y.numpy(), classes=np.array(a.classes), source=np.array(a.source)))
    except (OSError, ManidpError) as e:  # an unwritable cache only costs a decode next time
        warnings.warn(f"{cache}: could not write the decoded-image cache ({str(e).splitlines()[0]})")


# --------------------------------------------------------------------------- tensor loader

def _mix(*values: int) -> int:
    """A well-mixed 63-bit seed from several integers (seed, epoch, ...)."""
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values])
               .generate_state(1, np.uint64)[0] >> np.uint64(1))


def _shard_samples(num_samples: int, batch_size: int, drop_last: bool, shard: tuple[int, int]) -> int:
    """Instances one process sees per epoch (its part of every global batch)."""
    rank, processes = shard
    check(0 <= rank < processes, f"shard {shard}: rank must be in 0..{processes - 1}")
    if processes == 1:
        return num_samples if not drop_last else num_samples // batch_size * batch_size
    return sum(shard_sizes(n, processes)[rank] for n in batch_sizes(num_samples, batch_size, drop_last))


def crop_flip(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor,
              pad: int) -> torch.Tensor:
    """Crop each image of ``x`` (B, C, H, W) at (top, left) of its copy zero-padded by ``pad``,
    mirrored where ``flip``: one gather for the whole batch, no per-image Python loop."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    width = w + 2 * pad
    rows = top.to(x.device)[:, None] + torch.arange(h, device=x.device)          # (B, H)
    cols = left.to(x.device)[:, None] + torch.arange(w, device=x.device)         # (B, W)
    cols = torch.where(flip.to(x.device)[:, None], cols.flip(1), cols)
    # A flat index per output pixel; gather is several times faster than 4-way advanced indexing.
    flat = (rows[:, :, None] * width + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, flat).view(b, c, h, w)


class TensorLoader:
    """Iterates mini-batches of an in-memory uint8 dataset, augmenting on tensors (on the target
    device), so a GPU isn't starved by a Python data loader.

    ``train=True``: shuffle, random crop with zero padding ``pad``, horizontal flip with p=0.5,
    then normalise. ``train=False``: the instances in order, only normalised. Shuffle order and
    augmentation come from a generator seeded by ``(seed, epoch)`` (see :meth:`set_epoch`).

    ``shard=(rank, processes)``: ``batch_size`` is the global batch, and this process yields only its
    part of each (:func:`~manidp.distributed.shard_slice`; empty parts are skipped). The order and the
    crops and flips of the whole global batch are still drawn, so the parts of all processes together
    are exactly the batches of one process.
    """

    def __init__(self, x_uint8: torch.Tensor, y: torch.Tensor, batch_size: int, mean, std,
                 train: bool, device="cpu", seed: int = 0, drop_last: bool = False, pad: int = 4,
                 shard: tuple[int, int] = (0, 1)):
        check(x_uint8.dtype == torch.uint8 and x_uint8.dim() == 4,
              f"TensorLoader needs uint8 images (N, C, H, W), got {x_uint8.dtype} {tuple(x_uint8.shape)}")
        check(len(x_uint8) == len(y), f"TensorLoader: {len(x_uint8)} images but {len(y)} labels")
        check(batch_size >= 1, f"--batch-size must be at least 1, got {batch_size}")
        self.device = torch.device(device)
        self.x = x_uint8.to(self.device)
        self.y = y.to(self.device, torch.int64)
        self.batch_size, self.train, self.seed = int(batch_size), bool(train), int(seed)
        self.drop_last, self.pad, self.epoch = bool(drop_last), int(pad), 0
        self.num_samples = len(self.x)
        self.rank, self.processes = shard
        self.shard_samples = _shard_samples(self.num_samples, self.batch_size, self.drop_last, shard)
        c = self.x.shape[1]
        mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        # (x / 255 - mean) / std folded into one multiply-add
        self._scale, self._shift = 1.0 / (255.0 * std), -mean / std

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle order and augmentations the next iteration yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def normalise(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return x_uint8.float().mul_(self._scale).add_(self._shift)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Random numbers are drawn on the CPU so batches are identical whatever the device.
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        n = self.num_samples
        order = torch.randperm(n, generator=g) if self.train else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            if self.train:
                span = 2 * self.pad + 1
                top = torch.randint(span, (len(idx),), generator=g)
                left = torch.randint(span, (len(idx),), generator=g)
                flip = torch.rand(len(idx), generator=g) < 0.5
            if self.processes > 1:  # draws above stay those of the whole global batch
                part = shard_slice(len(idx), self.rank, self.processes)
                if part.start == part.stop:
                    continue
                idx = idx[part]
                if self.train:
                    top, left, flip = top[part], left[part], flip[part]
            idx = idx.to(self.device)
            x = self.x[idx]
            if self.train:
                x = crop_flip(x, top, left, flip, self.pad)
            yield self.normalise(x), self.y[idx]


# --------------------------------------------------------------------------- image folders

class _SeededImages(torch.utils.data.Dataset):
    """ImageFolder instances with a transform whose randomness is seeded by (seed, epoch, index),
    so augmentation is reproducible whatever the number of worker processes."""

    def __init__(self, folder, transform, seed: int, random: bool):
        self.folder, self.transform, self.seed, self.random, self.epoch = folder, transform, seed, random, 0

    def __len__(self):
        return len(self.folder.samples)

    def __getitem__(self, i):
        path, y = self.folder.samples[i]
        try:
            img = self.folder.loader(path)
        except Exception as e:  # PIL raises many types for bad files
            raise ManidpError(f"{path}: cannot read image ({_one_line(e)}); replace or delete it") from None
        if not self.random:
            return self.transform(img), y
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(self.seed, self.epoch, i))
            return self.transform(img), y


class ImageFolderLoader:
    """A DataLoader over an image folder that behaves like :class:`TensorLoader`:
    ``set_epoch`` (seeded shuffle and augmentation per epoch), ``num_samples``, ``len`` and
    ``(x, y)`` batches on ``device``. ``shard`` as for :class:`TensorLoader`: this process loads
    only its part of each global batch (augmentation is seeded per instance, so parts match)."""

    def __init__(self, images: _SeededImages, batch_size: int, train: bool, workers: int,
                 seed: int, device="cpu", indices=None, shard: tuple[int, int] = (0, 1)):
        self.images, self.train, self.workers, self.seed = images, train, int(workers), int(seed)
        self.batch_size, self.device, self.epoch = int(batch_size), torch.device(device), 0
        self.indices = list(range(len(images))) if indices is None else list(indices)
        self.num_samples = len(self.indices)
        self.rank, self.processes = shard
        self.shard_samples = _shard_samples(self.num_samples, self.batch_size, False, shard)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self):
        self.images.epoch = self.epoch  # workers get a copy of the dataset when iteration starts
        data = torch.utils.data.Subset(self.images, self.indices)
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        if self.processes == 1:
            loader = torch.utils.data.DataLoader(
                data, batch_size=self.batch_size, shuffle=self.train, generator=g,
                num_workers=self.workers, pin_memory=self.device.type == "cuda")
        else:
            loader = torch.utils.data.DataLoader(
                data, batch_sampler=self._shard_batches(g), num_workers=self.workers,
                pin_memory=self.device.type == "cuda")
        try:
            for x, y in loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        except ManidpError as e:
            # a worker's error arrives wrapped with its traceback: keep the one message line
            raise ManidpError(str(e).strip().splitlines()[-1].split("ManidpError: ", 1)[-1]) from None


    def _shard_batches(self, g: torch.Generator) -> list[list[int]]:
        """This process's part of every global batch, in the order DataLoader's shuffle gives one
        process: its iterator first draws a base seed from ``g``, then RandomSampler one randperm
        (torch 2.14; tests/test_distributed.py checks that the two orders still agree)."""
        n = self.num_samples
        order = list(range(n))
        if self.train:
            torch.empty((), dtype=torch.int64).random_(generator=g)
            order = torch.randperm(n, generator=g).tolist()
        batches = [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        parts = [b[shard_slice(len(b), self.rank, self.processes)] for b in batches]
        return [p for p in parts if p]


def _image_folder(folder: Path):
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS
    check(folder.is_dir(), f"{folder}: missing; an image-folder dataset needs train/ and val/ "
                           f"folders of class folders")
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    check(classes, f"{folder}: holds no class folders; put images in {folder}/<class>/")
    for d in classes:  # stop at the first image: checking must stay cheap on ImageNet
        check(any(e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS) for e in os.scandir(d)),
              f"{d}: class folder holds no images; remove it or fill it")
    return ImageFolder(str(folder))


def imagefolder_loaders(root, batch_size: int, workers: int = 2, image_size: int = 224,
                        resize: int | None = None, seed: int = 0, device="cpu",
                        limit_train: int | None = None, limit_test: int | None = None,
                        shard: tuple[int, int] = (0, 1)):
    """Loaders for an ImageNet-style tree ``root/train/<class>/*`` and ``root/val/<class>/*``.

    Train: RandomResizedCrop(image_size) + horizontal flip; val: Resize(resize, default
    image_size*256/224) + CenterCrop(image_size); both normalised with ImageNet statistics.
    ``limit_*`` keep that many instances, evenly spaced so every class stays represented.
    Returns ``(train_loader, val_loader, classes)``.
    """
    from torchvision import transforms as T
    root = Path(root).expanduser()
    check(root.is_dir(), f"{root}: no such folder; pass an image-folder root with train/ and val/")
    train_set, val_set = _image_folder(root / "train"), _image_folder(root / "val")
    check(train_set.classes == val_set.classes,
          f"{root / 'val'}: class folders differ from {root / 'train'}; both need the same classes")
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    val_tf = T.Compose([T.Resize(resize or round(image_size * 256 / 224)), T.CenterCrop(image_size),
                        T.ToTensor(), norm])
    train = ImageFolderLoader(_SeededImages(train_set, train_tf, seed, random=True), batch_size,
                              True, workers, seed, device, _spread(len(train_set), limit_train), shard)
    val = ImageFolderLoader(_SeededImages(val_set, val_tf, seed, random=False), batch_size,
                            False, workers, seed, device, _spread(len(val_set), limit_test), shard)
    return train, val, list(train_set.classes)


HELD_OUT = 4096   # at most this many unused training rows are kept for the MAC calibration


def _held_out(arrays: ImageArrays, train_i, batch_size: int, device, seed: int, shard):
    """Training rows that ``--limit-train`` left out (evenly spaced, at most HELD_OUT), unaugmented:
    the MAC calibration (calibrate.py) measures on instances the network never trained on, as the
    evaluation does. None when every training row is used."""
    used = torch.zeros(len(arrays.train_y), dtype=torch.bool)
    used[train_i] = True
    free = torch.nonzero(~used).flatten()
    if len(free) == 0:
        return None
    pick = free[torch.as_tensor(_spread(len(free), HELD_OUT))] if len(free) > HELD_OUT else free
    return TensorLoader(arrays.train_x[pick], arrays.train_y[pick], batch_size, arrays.mean, arrays.std,
                        train=False, device=device, seed=seed, shard=shard)


def _first_or_spread(y: torch.Tensor, n: int):
    """Indices of ``n`` of the rows labelled ``y``: the first ``n``, or evenly spaced ones when the
    rows are sorted by class (a JPEG copy read folder by folder), whose first rows hold few classes."""
    if n >= len(y) or not bool((y[1:] >= y[:-1]).all()):
        return slice(0, n)
    return torch.as_tensor(_spread(len(y), n))


def _spread(n: int, limit: int | None):
    """``limit`` evenly spaced indices of ``n`` (all when no limit): image folders are sorted by
    class, so the first ``limit`` would hold only the first classes."""
    if limit is None or limit >= n:
        return None
    return np.linspace(0, n - 1, num=max(int(limit), 1)).round().astype(int).tolist()


def make_synthetic_imagefolder(root, num_classes: int = 4, per_class: int = 8, size: int = 40,
                               seed: int = 0) -> Path:
    """Write a tiny, clearly synthetic image-folder tree (``train/``, ``val/``; PNG) for tests
    and smoke runs: noise with a blob whose colour depends on the class, so it is learnable.
    ``train`` gets ``per_class`` images per class, ``val`` half as many (at least 2)."""
    from PIL import Image
    root = Path(root)
    rng = np.random.default_rng(seed)
    hues = np.linspace(0, 1, num_classes, endpoint=False)
    yy, xx = np.mgrid[:size, :size]
    for split, count in (("train", per_class), ("val", max(2, per_class // 2))):
        for k in range(num_classes):
            folder = root / split / f"class{k:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array(_hue_to_rgb(hues[k]))
            for i in range(count):
                img = rng.integers(0, 80, (size, size, 3)).astype(np.float64)
                cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
                blob = (yy - cy) ** 2 + (xx - cx) ** 2 < (size / 4) ** 2
                img[blob] = 0.7 * colour + 0.3 * img[blob]
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    (root / "SYNTHETIC.txt").write_text(
        "Synthetic images made by manidp.data.make_synthetic_imagefolder for tests and smoke runs:\n"
        f"{num_classes} classes of noise with a class-coloured blob (seed {seed}). Not real data;\n"
        "never report results on it as results on a real dataset.\n")
    return root


def _hue_to_rgb(h: float) -> tuple[float, float, float]:
    import colorsys
    return tuple(255 * v for v in colorsys.hsv_to_rgb(h, 1.0, 1.0))


# --------------------------------------------------------------------------- dispatch

def build_loaders(dataset: str, data_path, batch_size: int, device, seed: int, workers: int = 2,
                  image_size: int | None = None, cache_dir=None, download: bool = False,
                  limit_train: int | None = None, limit_test: int | None = None,
                  shard: tuple[int, int] = (0, 1)):
    """``(train_loader, test_loader, info)`` for ``--dataset``; ``info`` holds num_classes,
    classes, source, input_size, num_train, num_test, mean, std.

    ``shard=(rank, processes)``: ``batch_size`` is the global batch and the loaders yield this
    process's part of each (multi-process training, ``manidp/distributed.py``).

    ``limit_train`` / ``limit_test`` keep only that many instances (smoke runs, CPU studies): the
    first ones for CIFAR in its own format, whose rows are in random class order; evenly spaced ones
    where rows are sorted by class (image folders, CIFAR JPEG copies), so every class is kept.
    """
    check(dataset in DATASETS, f"--dataset {dataset!r}: unknown; choose one of {', '.join(DATASETS)}")
    for name, limit in (("--limit-train", limit_train), ("--limit-test", limit_test)):
        check(limit is None or limit >= 1, f"{name} must be at least 1, got {limit}")
    if dataset == "imagenet":
        check(not download, "--download works only for CIFAR; prepare ImageNet as <root>/train "
                            "and <root>/val folders of class folders")
        size = image_size or 224
        train, test, classes = imagefolder_loaders(data_path, batch_size, workers, size, seed=seed,
                                                   device=device, limit_train=limit_train,
                                                   limit_test=limit_test, shard=shard)
        source = f"image folder {Path(data_path).expanduser()}"
        if (Path(data_path).expanduser() / "SYNTHETIC.txt").is_file():
            source = f"synthetic {source}"  # never let a smoke-test tree pass as real data
        info = dict(num_classes=len(classes), classes=classes, source=source, input_size=size,
                    num_train=train.num_samples, num_test=test.num_samples,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD)
        return train, test, info

    arrays = load_cifar(data_path, dataset, cache_dir=cache_dir, download=download)
    size = arrays.train_x.shape[-1]
    check(image_size in (None, size), f"--image-size {image_size} does not apply to {dataset}: its "
                                      f"images are {size}x{size}; leave --image-size unset")
    n_train = len(arrays.train_y) if limit_train is None else min(limit_train, len(arrays.train_y))
    n_test = len(arrays.test_y) if limit_test is None else min(limit_test, len(arrays.test_y))
    train_i, test_i = _first_or_spread(arrays.train_y, n_train), _first_or_spread(arrays.test_y, n_test)
    train = TensorLoader(arrays.train_x[train_i], arrays.train_y[train_i], batch_size,
                         arrays.mean, arrays.std, train=True, device=device, seed=seed, shard=shard)
    test = TensorLoader(arrays.test_x[test_i], arrays.test_y[test_i], batch_size,
                        arrays.mean, arrays.std, train=False, device=device, seed=seed, shard=shard)
    train.held_out = _held_out(arrays, train_i, batch_size, device, seed, shard)
    source = arrays.source
    if n_train < len(arrays.train_y) or n_test < len(arrays.test_y):
        source += f" (limited to {n_train} train / {n_test} test)"
    info = dict(num_classes=arrays.num_classes, classes=list(arrays.classes), source=source,
                input_size=size, num_train=n_train, num_test=n_test,
                mean=arrays.mean, std=arrays.std)
    return train, test, info
