"""python -m manidp.subset: the real CIFAR-10 subset rebuilt, bit-exact, from a full download.

No full CIFAR-10 is available offline, so the full download is stood in for by an archive in the
official layout (cifar-10-python.tar.gz: cifar-10-batches-py/ with five training batches, the test
batch, batches.meta and readme.html) whose batches hold the subset's real rows first, then other rows,
with the originals' keys (filenames included) and batch labels, pickled with protocol 2 as the
originals are (their strings are bytes here, Python 2 strs there: both load as bytes with
encoding="bytes", as the builder reads them). The builder decodes the pickles and
writes every byte anew, so equality with the published archive's sha256 is a real check.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest

from manidp import subset
from manidp.errors import ManidpError


def _members(path) -> dict[str, dict]:
    with tarfile.open(path) as t:
        return {m.name.split("/")[-1]: pickle.loads(t.extractfile(m).read(), encoding="bytes")
                for m in t.getmembers() if m.isfile()}


@pytest.fixture(scope="module")
def download(cifar_mini, tmp_path_factory):
    """A stand-in for cifar-10-python.tar.gz: 10,000 rows per batch, the subset's rows first."""
    got = _members(cifar_mini)
    files = {"batches.meta": pickle.dumps(got["batches.meta"], protocol=2), "readme.html": b"<html></html>"}
    for name, label in (("data_batch_1", b"training batch 1 of 5"), ("test_batch", b"testing batch 1 of 1")):
        d = got[name]
        rest = 10000 - len(d[b"labels"])
        data = np.concatenate([d[b"data"], np.full((rest, 3072), 7, dtype=np.uint8)])
        labels = list(d[b"labels"]) + [i % 10 for i in range(rest)]
        files[name] = pickle.dumps({b"batch_label": label, b"labels": labels, b"data": data,
                                    b"filenames": [b"image_%05d.png" % i for i in range(10000)]}, protocol=2)
    for i in range(2, 6):
        files[f"data_batch_{i}"] = b"not read by the builder"
    path = tmp_path_factory.mktemp("download") / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as t:
        for name, raw in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            t.addfile(info, io.BytesIO(raw))
    return path


def test_published_constants_are_the_real_subsets(cifar_mini):
    raw = cifar_mini.read_bytes()
    import gzip
    assert hashlib.sha256(raw).hexdigest() == subset.ARCHIVE_SHA256
    assert hashlib.sha256(gzip.decompress(raw)).hexdigest() == subset.TAR_SHA256


def test_full_download_gives_the_published_archive(download, cifar_mini, tmp_path):
    r = subset.build(download, tmp_path / "out" / "cifar10-mini.tgz")
    assert r["tar_sha256"] == subset.TAR_SHA256
    built = (tmp_path / "out" / "cifar10-mini.tgz").read_bytes()
    if r["compressor"].startswith("GNU gzip"):       # the published archive's compressor
        assert r["archive_matches"] and built == cifar_mini.read_bytes()
    got, want = _members(tmp_path / "out" / "cifar10-mini.tgz"), _members(cifar_mini)
    assert got.keys() == want.keys() == {"batches.meta", "data_batch_1", "test_batch"}
    for name in ("data_batch_1", "test_batch"):
        assert np.array_equal(got[name][b"data"], want[name][b"data"]) and got[name][b"labels"] == want[name][b"labels"]


def _extract(archive, folder):
    with tarfile.open(archive) as t:
        t.extractall(folder, filter="data")
    return folder / "cifar-10-batches-py"


def test_a_wrong_row_is_refused_and_nothing_written(cifar_mini, tmp_path):
    batch = _extract(cifar_mini, tmp_path / "in") / "data_batch_1"
    d = pickle.loads(batch.read_bytes(), encoding="bytes")
    d[b"data"][3999, 0] ^= 1                         # one bit of the last row the subset takes
    batch.write_bytes(pickle.dumps(d, protocol=2))
    out = tmp_path / "out" / "cifar10-mini.tgz"
    with pytest.raises(ManidpError, match=r"not the published one .* download CIFAR-10 again\. Nothing was written"):
        subset.build(tmp_path / "in", out)
    assert not out.exists() and not out.with_name(out.name + ".part").exists()


def test_command_line(cifar_mini, tmp_path, capsys):
    folder = _extract(cifar_mini, tmp_path / "extracted")
    assert subset.main([str(folder), "--out", str(tmp_path / "mini.tgz")]) == 0    # the extracted folder
    out = capsys.readouterr().out
    assert f"contents bit-exact: tar sha256 {subset.TAR_SHA256}" in out
    assert subset.main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("manidp: error: ")
