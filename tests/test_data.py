"""Tests of manidp.data: CIFAR loading (real subset, crafted copies, JPEG copies), the error
messages for bad input, TensorLoader augmentation and determinism, and image-folder loaders."""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from manidp import data
from manidp.data import (CIFAR10_CLASSES, ImageArrays, TensorLoader, build_loaders, crop_flip,
                         imagefolder_loaders, load_cifar, make_synthetic_imagefolder)
from manidp.errors import ManidpError

from datapaths import JPEG, MINI     # $MANIDP_DATA, ../shared/data, resources/data (tests/datapaths.py)
need_mini = pytest.mark.skipif(not MINI.is_file(), reason=f"real CIFAR-10 subset not found at {MINI}")
need_jpeg = pytest.mark.skipif(not JPEG.is_file(), reason=f"CIFAR-10 JPEG copy not found at {JPEG}")


# --------------------------------------------------------------------------- helpers

def write_batch(path: Path, x: np.ndarray, labels, label_key="labels") -> None:
    """A batch file in the real CIFAR pickle layout."""
    with open(path, "wb") as f:
        pickle.dump({"batch_label": "test batch", "data": x, label_key: list(labels)}, f)


def fake_cifar10(folder: Path, rows: int = 4, train_batches: int = 5, seed: int = 0) -> Path:
    """A tiny copy in the cifar-10-batches-py format (right layout, made-up pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, train_batches + 1)] + ["test_batch"]:
        write_batch(folder / name, rng.integers(0, 256, (rows, 3072), dtype=np.uint8),
                    rng.integers(0, 10, rows))
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES), "num_vis": 3072}, f)
    return folder


def make_jpeg_tree(root: Path, per_class=2, classes=CIFAR10_CLASSES, seed=0) -> dict:
    """A train/<class>/*.jpg, test/<class>/*.jpg tree; returns {relative path: original pixels}."""
    rng = np.random.default_rng(seed)
    originals = {}
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                # smooth colour gradients, so JPEG q75 stays close to the original pixels
                r, g = np.mgrid[:32, :32] * rng.uniform(2, 7, 2)[:, None, None]
                img = np.dstack([r, g, np.full((32, 32), rng.uniform(0, 255))]).astype(np.uint8)
                rel = f"{split}/{c}/{i:04d}.jpg"
                Image.fromarray(img).save(root / rel, quality=75)
                originals[rel] = img
    return originals


def make_tar(src: Path, archive: Path, arcname: str = "") -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        for child in sorted(src.iterdir()):
            tf.add(child, arcname=f"{arcname}/{child.name}" if arcname else child.name)
    return archive


def raises_one_line(fn, *needles) -> str:
    """Run ``fn``; it must raise ManidpError whose single-line message contains every needle."""
    with pytest.raises(ManidpError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert str(needle) in msg, msg
    return msg


@pytest.fixture(scope="module")
def mini() -> ImageArrays:
    if not MINI.is_file():
        pytest.skip(f"real CIFAR-10 subset not found at {MINI}")
    return load_cifar(MINI)


@pytest.fixture(scope="module")
def mini_folder(tmp_path_factory) -> Path:
    if not MINI.is_file():
        pytest.skip(f"real CIFAR-10 subset not found at {MINI}")
    root = tmp_path_factory.mktemp("mini")
    with tarfile.open(MINI) as tf:
        tf.extractall(root, filter="data")
    return root


# --------------------------------------------------------------------------- CIFAR, real data

@need_mini
def test_mini_subset_loads(mini):
    assert mini.train_x.shape == (4000, 3, 32, 32) and mini.test_x.shape == (1000, 3, 32, 32)
    assert mini.train_x.dtype == mini.test_x.dtype == torch.uint8
    assert mini.train_y.dtype == mini.test_y.dtype == torch.int64
    assert mini.train_y.shape == (4000,) and mini.test_y.shape == (1000,)
    for y in (mini.train_y, mini.test_y):
        assert 0 <= int(y.min()) and int(y.max()) <= 9
    assert mini.classes == list(CIFAR10_CLASSES) and mini.num_classes == 10
    assert mini.train_y[:5].tolist() == [6, 9, 9, 4, 1]  # the real data_batch_1 starts this way
    assert "subset: 4000 train / 1000 test" in mini.source and str(MINI) in mini.source
    assert mini.mean == data.CIFAR10_MEAN and len(mini.std) == 3


@need_mini
def test_mini_folder_and_parent_equal_archive(mini, mini_folder):
    for path in (mini_folder, mini_folder / "cifar-10-batches-py"):
        a = load_cifar(path)
        for name in ("train_x", "train_y", "test_x", "test_y"):
            assert torch.equal(getattr(a, name), getattr(mini, name)), (path, name)
        assert a.classes == mini.classes and "subset" in a.source


@need_mini
@need_jpeg
def test_real_jpeg_copy_matches_subset(mini, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    a = load_cifar(JPEG, cache_dir=cache)
    assert a.train_x.shape == (50000, 3, 32, 32) and a.test_x.shape == (10000, 3, 32, 32)
    assert a.classes == list(CIFAR10_CLASSES)
    assert "JPEG q75 copy" in a.source and "subset" not in a.source
    assert torch.bincount(a.test_y).tolist() == [1000] * 10
    # test/<class>/NNNN.jpg follow test_batch order within each class: close to the lossless rows
    for k in range(10):
        ref = mini.test_x[mini.test_y == k][:10].float()
        got = a.test_x[a.test_y == k][:10].float()
        psnr = 10 * torch.log10(255 ** 2 / ((ref - got) ** 2).mean(dim=(1, 2, 3)))
        assert psnr.min() > 20, (k, psnr)
    start = time.perf_counter()
    b = load_cifar(JPEG, cache_dir=cache)  # from the cache
    assert time.perf_counter() - start < 5
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)


# --------------------------------------------------------------------------- CIFAR, crafted copies

def test_full_copy_with_matching_md5_is_verified(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10
    folder = fake_cifar10(tmp_path / "cifar-10-batches-py")
    md5 = {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in folder.iterdir()}
    batches = [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)]
    monkeypatch.setattr(CIFAR10, "train_list", batches)
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    a = load_cifar(tmp_path)
    assert a.train_x.shape == (20, 3, 32, 32) and a.test_x.shape == (4, 3, 32, 32)
    assert "md5 verified" in a.source and "subset" not in a.source


def test_subset_of_batches_skips_md5(tmp_path):
    folder = fake_cifar10(tmp_path / "cifar-10-batches-py", train_batches=2)
    a = load_cifar(folder)
    assert a.train_x.shape == (8, 3, 32, 32)
    assert "subset: 8 train / 4 test" in a.source
    # rows are laid out channel-major: R plane, G plane, B plane, each 32x32 row by row
    with open(folder / "data_batch_1", "rb") as f:
        first = pickle.load(f)["data"][0]
    assert torch.equal(a.train_x[0], torch.from_numpy(first.reshape(3, 32, 32)))


def test_cifar100_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, rows in (("train", 6), ("test", 3)):
        write_batch(folder / name, rng.integers(0, 256, (rows, 3072), dtype=np.uint8),
                    rng.integers(0, 100, rows), label_key="fine_labels")
    names = [f"class{i:02d}" for i in range(100)]
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": []}, f)
    archive = make_tar(tmp_path, tmp_path.parent / "c100.tar.gz")
    for path in (tmp_path, archive):
        a = load_cifar(path, "cifar100", cache_dir=tmp_path / "cache")
        assert a.num_classes == 100 and a.classes == names
        assert a.train_x.shape == (6, 3, 32, 32) and "CIFAR-100 (subset: 6 train / 3 test)" in a.source
        assert a.mean == data.CIFAR100_MEAN
    raises_one_line(lambda: load_cifar(tmp_path, "cifar10"), "--dataset cifar100")
    raises_one_line(lambda: load_cifar(archive, "cifar10"), "--dataset cifar100")


# --------------------------------------------------------------------------- JPEG copies

def test_jpeg_tree_folder_archive_and_cache(tmp_path, monkeypatch):
    originals = make_jpeg_tree(tmp_path / "jpeg")
    archive = make_tar(tmp_path / "jpeg", tmp_path / "cifar10-jpeg.tar.gz", arcname="cifar10-jpeg")
    cache = tmp_path / "cache"
    a = load_cifar(tmp_path / "jpeg", cache_dir=cache)
    b = load_cifar(archive, cache_dir=cache)
    for arrays in (a, b):
        assert arrays.train_x.shape == (20, 3, 32, 32) and arrays.test_x.shape == (20, 3, 32, 32)
        assert arrays.train_x.dtype == torch.uint8 and arrays.classes == list(CIFAR10_CLASSES)
        assert arrays.train_y.tolist() == [k for k in range(10) for _ in range(2)]
        assert "JPEG q75 copy, subset: 20 train / 20 test" in arrays.source
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_x, b.test_x)
    ref = torch.from_numpy(originals["train/bird/0001.jpg"]).permute(2, 0, 1).float()
    assert (a.train_x[5].float() - ref).abs().mean() < 3  # decoded RGB, channel-first
    assert len(list(cache.glob("*.npz"))) == 2

    def no_decoding(*args):
        raise AssertionError("decoded again instead of using the cache")
    monkeypatch.setattr(data, "_decode_jpegs", no_decoding)
    c = load_cifar(archive, cache_dir=cache)
    assert torch.equal(c.train_x, b.train_x) and c.source == b.source
    # a changed archive (new mtime) is a new cache key: it must be decoded again
    os.utime(archive, ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded again"):
        load_cifar(archive, cache_dir=cache)


def test_pil_fallback_decodes_identically(tmp_path, monkeypatch):
    make_jpeg_tree(tmp_path / "jpeg", per_class=1)
    a = load_cifar(tmp_path / "jpeg", cache_dir=tmp_path / "c1")
    import torchvision.io
    monkeypatch.delattr(torchvision.io, "decode_jpeg")  # as when torchvision drops its decoders
    b = load_cifar(tmp_path / "jpeg", cache_dir=tmp_path / "c2")
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_x, b.test_x)


def test_damaged_cache_is_rebuilt(tmp_path):
    make_jpeg_tree(tmp_path / "jpeg", per_class=1)
    cache = tmp_path / "cache"
    a = load_cifar(tmp_path / "jpeg", cache_dir=cache)
    (entry,) = cache.glob("*.npz")
    entry.write_bytes(b"not a zip")
    with pytest.warns(UserWarning, match="unreadable cache"):
        b = load_cifar(tmp_path / "jpeg", cache_dir=cache)
    assert torch.equal(a.train_x, b.train_x)


# --------------------------------------------------------------------------- bad input

def test_error_missing_path(tmp_path):
    raises_one_line(lambda: load_cifar(tmp_path / "nowhere"), tmp_path / "nowhere", "no such")


def test_error_empty_folder(tmp_path):
    raises_one_line(lambda: load_cifar(tmp_path), tmp_path, "empty")


def test_error_unrecognised_folder_and_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    raises_one_line(lambda: load_cifar(tmp_path), tmp_path, "no CIFAR-10 found")
    raises_one_line(lambda: load_cifar(tmp_path / "notes.txt"), "notes.txt", "not a folder or")


def test_error_unknown_dataset(tmp_path):
    raises_one_line(lambda: load_cifar(tmp_path, "mnist"), "--dataset", "mnist", "cifar100")
    raises_one_line(lambda: build_loaders("mnist", tmp_path, 8, "cpu", 0), "--dataset", "imagenet")


@need_mini
def test_error_truncated_pickle(tmp_path, mini_folder):
    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(mini_folder / "cifar-10-batches-py", folder)
    blob = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(blob[: len(blob) // 2])
    raises_one_line(lambda: load_cifar(tmp_path), folder / "test_batch", "truncated or corrupt")


def test_error_truncated_archive(tmp_path):
    fake_cifar10(tmp_path / "src" / "cifar-10-batches-py", rows=200)
    archive = make_tar(tmp_path / "src", tmp_path / "c.tgz")
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2])
    raises_one_line(lambda: load_cifar(archive, cache_dir=tmp_path), archive, "truncated or corrupt")


def test_error_wrong_md5_on_full_copy(tmp_path):
    fake_cifar10(tmp_path / "cifar-10-batches-py")
    archive = make_tar(tmp_path, tmp_path.parent / f"{tmp_path.name}.tgz")
    raises_one_line(lambda: load_cifar(tmp_path), "data_batch_1", "md5", "c99cafc152244af753f735de768cd75f")
    raises_one_line(lambda: load_cifar(archive, cache_dir=tmp_path), archive, "data_batch_1", "md5")


@pytest.mark.parametrize("case, needle", [
    ("short rows", "3072 bytes"),
    ("float data", "uint8"),
    ("label count", "3 labels for 4 images"),
    ("label range", "labels must be integers in 0..9"),
    ("missing test", "missing"),
    ("missing meta", "missing"),
    ("not a dict", "not a CIFAR batch"),
])
def test_error_bad_batch(tmp_path, case, needle):
    folder = fake_cifar10(tmp_path / "cifar-10-batches-py", train_batches=1)
    bad = folder / "data_batch_1"
    x = np.zeros((4, 3072), dtype=np.uint8)
    if case == "short rows":
        write_batch(bad, np.zeros((4, 3000), dtype=np.uint8), [0] * 4)
    elif case == "float data":
        write_batch(bad, x.astype(np.float32), [0] * 4)
    elif case == "label count":
        write_batch(bad, x, [0] * 3)
    elif case == "label range":
        write_batch(bad, x, [0, 1, 2, 10])
    elif case == "missing test":
        bad = folder / "test_batch"
        bad.unlink()
    elif case == "missing meta":
        bad = folder / "batches.meta"
        bad.unlink()
    else:
        bad.write_bytes(pickle.dumps([1, 2, 3]))
    raises_one_line(lambda: load_cifar(tmp_path), bad, needle)


class _Sneaky:
    def __reduce__(self):
        return (os.getcwd, ())


def test_error_pickle_with_foreign_code_is_refused(tmp_path):
    folder = fake_cifar10(tmp_path / "cifar-10-batches-py", train_batches=1)
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": _Sneaky(), "labels": []}))
    raises_one_line(lambda: load_cifar(tmp_path), "data_batch_1", "refusing global")


def test_error_jpeg_wrong_shape_and_unreadable(tmp_path):
    make_jpeg_tree(tmp_path, per_class=1)
    small = tmp_path / "test" / "cat" / "0000.jpg"
    def load():
        return load_cifar(tmp_path, cache_dir=tmp_path / "c")
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(small)
    raises_one_line(load, small, "32x32")
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(small)  # grayscale
    raises_one_line(load, small, "(1, 32, 32)")
    small.write_bytes(b"\xff\xd8 not really a jpeg")
    raises_one_line(load, small, "not a readable JPEG")


def test_error_jpeg_classes(tmp_path):
    make_jpeg_tree(tmp_path / "a", per_class=1, classes=CIFAR10_CLASSES[:9] + ("lorry",))
    raises_one_line(lambda: load_cifar(tmp_path / "a", cache_dir=tmp_path / "c"), "lorry", "CIFAR-10's")
    make_jpeg_tree(tmp_path / "b", per_class=1)
    (tmp_path / "b" / "test" / "ship" / "0000.jpg").unlink()
    raises_one_line(lambda: load_cifar(tmp_path / "b", cache_dir=tmp_path / "c"), "ship", "no .jpg")


# --------------------------------------------------------------------------- TensorLoader

def reference_crop_flip(img: torch.Tensor, top: int, left: int, flip: bool, pad: int) -> torch.Tensor:
    """The obvious per-image version: pad, slice, mirror."""
    c, h, w = img.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=img.dtype)
    padded[:, pad:pad + h, pad:pad + w] = img
    out = padded[:, top:top + h, left:left + w]
    return out.flip(2) if flip else out


def numbered_images(n=40, size=8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)  # no zeros: padding shows
    return x, torch.arange(n)


def test_crop_flip_matches_reference():
    x, _ = numbered_images(64)
    g = torch.Generator().manual_seed(0)
    for pad in (0, 2, 4):
        top = torch.randint(2 * pad + 1, (64,), generator=g)
        left = torch.randint(2 * pad + 1, (64,), generator=g)
        flip = torch.rand(64, generator=g) < 0.5
        got = crop_flip(x, top, left, flip, pad)
        want = torch.stack([reference_crop_flip(x[i], int(top[i]), int(left[i]), bool(flip[i]), pad)
                            for i in range(64)])
        assert torch.equal(got, want), pad


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_determinism_by_seed_and_epoch():
    x, y = numbered_images()
    a = TensorLoader(x, y, 16, data.CIFAR10_MEAN, data.CIFAR10_STD, train=True, seed=3)
    b = TensorLoader(x, y, 16, data.CIFAR10_MEAN, data.CIFAR10_STD, train=True, seed=3)
    a.set_epoch(5)
    b.set_epoch(5)
    first, again, other = batches(a), batches(b), batches(a)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(first, again))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(first, other))  # re-iterating: same data
    b.set_epoch(6)
    order5 = torch.cat([y for _, y in first])
    order6 = torch.cat([y for _, y in batches(b)])
    assert not torch.equal(order5, order6)
    assert sorted(order5.tolist()) == sorted(order6.tolist()) == list(range(40))  # each once
    c = TensorLoader(x, y, 16, data.CIFAR10_MEAN, data.CIFAR10_STD, train=True, seed=4)
    c.set_epoch(5)
    assert not torch.equal(order5, torch.cat([y for _, y in c]))


def test_train_batches_are_crops_and_flips_of_their_instances():
    x, y = numbered_images()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    loader = TensorLoader(x, y, 16, mean, std, train=True, seed=0, pad=2)
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    flips, offsets = 0, set()
    for xb, yb in loader:
        assert xb.dtype == torch.float32 and xb.shape[1:] == (3, 8, 8)
        pixels = (xb * s + m) * 255  # undo the normalisation
        for img, i in zip(pixels, yb.tolist()):
            hits = [(t, l, f) for t in range(5) for l in range(5) for f in (False, True)
                    if torch.allclose(img, reference_crop_flip(x[i], t, l, f, 2).float(), atol=1e-3)]
            assert hits, f"instance {i} is no crop/flip of itself"
            flips += hits[0][2]
            offsets.add(hits[0][:2])
    assert 5 <= flips <= 35 and len(offsets) > 10  # about half flipped, offsets vary


def test_eval_loader_yields_exact_normalised_instances_in_order():
    x, y = numbered_images(37)
    loader = TensorLoader(x, y, 16, data.CIFAR10_MEAN, data.CIFAR10_STD, train=False, seed=0)
    assert len(loader) == 3 and loader.num_samples == 37
    got = batches(loader)
    assert [len(b[1]) for b in got] == [16, 16, 5]
    m = torch.tensor(data.CIFAR10_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(data.CIFAR10_STD).view(1, 3, 1, 1)
    assert torch.allclose(torch.cat([b[0] for b in got]), (x.float() / 255 - m) / s, atol=1e-5)
    assert torch.equal(torch.cat([b[1] for b in got]), y)
    drop = TensorLoader(x, y, 16, data.CIFAR10_MEAN, data.CIFAR10_STD, train=True, drop_last=True)
    assert len(drop) == 2 and [len(b) for _, b in drop] == [16, 16]


def test_loader_speed():
    x = torch.randint(0, 256, (2048, 3, 32, 32), dtype=torch.uint8)
    loader = TensorLoader(x, torch.zeros(2048, dtype=torch.long), 128, data.CIFAR10_MEAN,
                          data.CIFAR10_STD, train=True)
    threads = torch.get_num_threads()
    # One thread: on a busy 2-core machine, 2 intra-op threads can spin-wait 100x slower.
    torch.set_num_threads(1)
    try:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            batches(loader)
            times.append((time.perf_counter() - start) / 2048)
    finally:
        torch.set_num_threads(threads)
    assert min(times) < 0.2e-3, f"{min(times) * 1e3:.3f} ms per image"


def test_loader_rejects_bad_input():
    raises_one_line(lambda: TensorLoader(torch.zeros(4, 3, 8, 8), torch.zeros(4), 2, (0,) * 3,
                                         (1,) * 3, train=True), "uint8")
    raises_one_line(lambda: TensorLoader(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(3),
                                         2, (0,) * 3, (1,) * 3, train=True), "4 images but 3 labels")


# --------------------------------------------------------------------------- image folders

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_synthetic_imagefolder(tmp_path_factory.mktemp("synthetic") / "tree", num_classes=3,
                                      per_class=6, size=40)


def test_synthetic_imagefolder_loads(synthetic):
    assert (synthetic / "SYNTHETIC.txt").is_file()
    train, val, classes = imagefolder_loaders(synthetic, batch_size=4, workers=0, image_size=32, seed=1)
    assert classes == ["class00", "class01", "class02"]
    assert train.num_samples == 18 and val.num_samples == 9 and len(train) == 5 and len(val) == 3
    xb, yb = next(iter(val))
    assert xb.shape == (4, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert torch.cat([y for _, y in val]).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # in order
    # the class colour survives: mean channel values differ between classes
    means = torch.stack([torch.cat([x for x, y in val])[torch.cat([y for _, y in val]) == k].mean((0, 2, 3))
                         for k in range(3)])
    assert (means[0] - means[1]).abs().max() > 0.3


def test_imagefolder_determinism(synthetic):
    train, _, _ = imagefolder_loaders(synthetic, batch_size=5, workers=0, image_size=24, seed=1)
    train.set_epoch(2)
    a, b = batches(train), batches(train)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    train.set_epoch(3)
    c = batches(train)
    assert not torch.equal(torch.cat([x for x, _ in a]), torch.cat([x for x, _ in c]))
    # worker processes get the same per-instance seeds: same batches whatever the worker count
    two, _, _ = imagefolder_loaders(synthetic, batch_size=5, workers=2, image_size=24, seed=1)
    two.set_epoch(2)
    d = batches(two)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, d))


def test_imagefolder_errors(tmp_path, synthetic):
    raises_one_line(lambda: imagefolder_loaders(tmp_path / "none", 4, workers=0), tmp_path / "none")
    tree = tmp_path / "tree"
    shutil.copytree(synthetic, tree)
    shutil.rmtree(tree / "val")
    raises_one_line(lambda: imagefolder_loaders(tree, 4, workers=0), tree / "val", "missing")
    shutil.copytree(synthetic / "val", tree / "val")
    for f in (tree / "train" / "class01").iterdir():
        f.unlink()
    raises_one_line(lambda: imagefolder_loaders(tree, 4, workers=0), tree / "train" / "class01", "no images")
    (tree / "train" / "class01" / "0000.png").write_bytes(b"garbage")
    loader, _, _ = imagefolder_loaders(tree, 4, workers=0)
    raises_one_line(lambda: batches(loader), "0000.png", "cannot read image")


# --------------------------------------------------------------------------- build_loaders

@need_mini
def test_build_loaders_cifar(mini):
    train, test, info = build_loaders("cifar10", MINI, 128, "cpu", seed=0, limit_train=1000)
    assert info["num_classes"] == 10 and info["classes"] == list(CIFAR10_CLASSES)
    assert info["input_size"] == 32 and info["num_train"] == 1000 and info["num_test"] == 1000
    assert "subset" in info["source"] and "limited to 1000 train" in info["source"]
    assert isinstance(train, TensorLoader) and train.train and not test.train
    assert train.num_samples == 1000 and len(test) == 8
    raises_one_line(lambda: build_loaders("cifar10", MINI, 128, "cpu", 0, image_size=224), "--image-size")


def test_limit_on_a_class_sorted_jpeg_copy_keeps_every_class(tmp_path):
    """A JPEG copy is read folder by folder (sorted by class): --limit-train must not keep only the
    first classes; the pickle format (random class order) keeps its first rows."""
    make_jpeg_tree(tmp_path / "jpeg", per_class=2)
    train, test, info = build_loaders("cifar10", tmp_path / "jpeg", 4, "cpu", seed=0, limit_train=10, limit_test=5,
                                      cache_dir=tmp_path / "cache")
    assert sorted(train.y.tolist()) == list(range(10)) and len(set(test.y.tolist())) == 5
    y = torch.tensor([3, 1, 2, 0, 1])
    assert data._first_or_spread(y, 3) == slice(0, 3)
    assert data._first_or_spread(torch.tensor([0, 0, 1, 1, 2, 2]), 3).tolist() == [0, 2, 5]


def test_build_loaders_imagenet(synthetic):
    train, test, info = build_loaders("imagenet", synthetic, 4, "cpu", seed=0, workers=0,
                                      image_size=32, limit_train=6)
    assert info["num_classes"] == 3 and info["input_size"] == 32 and info["num_train"] == 6
    assert info["num_test"] == 9 and info["source"].startswith("synthetic")
    assert sorted(torch.cat([y for _, y in train]).tolist()) == [0, 0, 1, 1, 2, 2]  # spread over classes
    train.set_epoch(1)
    x, y = next(iter(train))
    assert x.shape == (4, 3, 32, 32)
