"""Build the project's real CIFAR-10 subset, bit-exact, from a full CIFAR-10 download.

    python -m manidp.subset ~/Downloads/cifar-10-python.tar.gz          # -> resources/data/cifar10-mini.tgz
    python -m manidp.subset /data/cifar-10-batches-py --out /tmp/cifar10-mini.tgz

The subset (``cifar10-mini.tgz``, what the tests and the smoke run read) holds, in the real
``cifar-10-batches-py`` format: ``data_batch_1`` = the first 4,000 rows of the real ``data_batch_1``,
``test_batch`` = the first 1,000 rows of the real ``test_batch``, and ``batches.meta``. This module
rewrites exactly the bytes of the published archive, so its sha256 can be checked:

- each pickle is protocol 4 with the originals' strings as Python 2 strings (SHORT_BINSTRING, so
  ``encoding="latin1"`` or ``"bytes"`` loads them as it loads the originals), keys in the published
  order, ``batch_label`` marked "(first N rows)", no ``filenames`` (numpy >= 2 writes the arrays);
- a GNU-format tar with the published archive's member times, owner and modes;
- ``gzip -n -6`` (GNU gzip). Where no GNU gzip is found, Python's zlib compresses instead: the archive
  bytes then differ, and the check falls back to the sha256 of the tar inside, which decides whether
  the contents are bit-exact.

Any input whose first rows are the originals' gives the published bytes: the sha256 of the result is
the check (not the input files' md5, so an archive re-packed by a mirror works). The result is
written atomically, and nothing is written when the check fails.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

from .errors import ManidpError

FOLDER = "cifar-10-batches-py"
ROWS = {"data_batch_1": 4000, "test_batch": 1000}
META = "batches.meta"
# The published subset (its data README): the archive's sha256, and that of the tar inside it
# (`gzip -dc cifar10-mini.tgz | sha256sum`), which does not depend on the compressor.
ARCHIVE_SHA256 = "5ccbdcbf52d4d7fc628033e96a41883efaf70f165a8b0f61878b3af03fc69614"
TAR_SHA256 = "d66d5ab11ee6630342b5d41d652b9026a480af147953a841a382b2bfe8c718d6"
# Member times of the published archive (seconds since 1970), kept so the bytes are the same.
DIR_MTIME, FILE_MTIME = 1795805451, 1795805457
DEFAULT_OUT = Path("resources/data/cifar10-mini.tgz")


class _Py2Str(str):
    """A string the originals hold as a Python 2 ``str``: pickled as SHORT_BINSTRING / BINSTRING."""


class _Pickler(pickle._Pickler):       # the pure-Python pickler: its dispatch table can be extended
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2str(self, obj: _Py2Str) -> None:
        raw = obj.encode("latin1")
        head = pickle.SHORT_BINSTRING + bytes([len(raw)]) if len(raw) < 256 else \
            pickle.BINSTRING + struct.pack("<i", len(raw))
        self.write(head + raw)
        self.memoize(obj)

    dispatch[_Py2Str] = save_py2str


def _dumps(obj: dict) -> bytes:
    f = io.BytesIO()
    _Pickler(f, protocol=4).dump(obj)
    return f.getvalue()


def _text(value) -> _Py2Str:
    return _Py2Str(value.decode("latin1") if isinstance(value, bytes) else value)


def _get(d: dict, key: str, where: str):
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise ManidpError(f"{where}: no '{key}' entry; is this CIFAR-10's {FOLDER}?")


def subset_pickles(files: dict[str, bytes]) -> dict[str, bytes]:
    """The subset's three pickles from the originals' (file name -> bytes, as in ``cifar-10-batches-py``)."""
    import numpy as np
    if int(np.__version__.split(".")[0]) < 2:
        raise ManidpError(f"numpy {np.__version__}: the subset's arrays are pickled by numpy >= 2 "
                          f"(numpy._core); install numpy >= 2")
    out = {}
    for name in (META, *ROWS):
        if name not in files:
            raise ManidpError(f"{FOLDER}/{name} is missing from the input; give the full CIFAR-10 download")
        try:
            d = pickle.loads(files[name], encoding="bytes")
        except Exception as e:       # any unpickling failure is a damaged file
            raise ManidpError(f"{FOLDER}/{name}: cannot be unpickled ({type(e).__name__}); download it again") from None
        if name == META:
            out[name] = _dumps({_Py2Str("num_cases_per_batch"): int(_get(d, "num_cases_per_batch", name)),
                                _Py2Str("label_names"): [_text(n) for n in _get(d, "label_names", name)],
                                _Py2Str("num_vis"): int(_get(d, "num_vis", name))})
            continue
        rows, data, labels = ROWS[name], _get(d, "data", name), list(_get(d, "labels", name))
        if len(data) < rows or len(labels) < rows:
            raise ManidpError(f"{FOLDER}/{name} holds {len(data)} rows; the subset takes its first {rows}")
        base = re.sub(r" \(first \d+ rows\)$", "", _text(_get(d, "batch_label", name)))  # an input subset's own
        out[name] = _dumps({_Py2Str("batch_label"): _Py2Str(f"{base} (first {rows} rows)"),
                            _Py2Str("labels"): [int(v) for v in labels[:rows]],
                            _Py2Str("data"): np.ascontiguousarray(data[:rows], dtype=np.uint8)})
    return out


def read_input(src: Path) -> dict[str, bytes]:
    """The pickles of a CIFAR-10 download: ``cifar-10-python.tar.gz`` (or any .tgz holding
    ``cifar-10-batches-py/``), or the extracted folder (or its parent)."""
    names = (META, *ROWS)
    if src.is_file():
        try:
            with tarfile.open(src) as t:
                found = {}
                for m in t.getmembers():
                    base = m.name.rstrip("/").split("/")[-1]
                    if m.isfile() and base in names and m.name.rstrip("/").split("/")[-2:-1] == [FOLDER]:
                        found[base] = t.extractfile(m).read()
                return found
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ManidpError(f"{src}: not a readable .tar.gz ({e}); give cifar-10-python.tar.gz or its "
                              f"extracted {FOLDER}/ folder") from None
    for folder in (src / FOLDER, src):
        if (folder / "test_batch").is_file():
            return {n: (folder / n).read_bytes() for n in names if (folder / n).is_file()}
    raise ManidpError(f"{src}: no {FOLDER}/ found; give cifar-10-python.tar.gz or its extracted folder")


def tar_bytes(pickles: dict[str, bytes]) -> bytes:
    f = io.BytesIO()
    with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, data in [(FOLDER, None)] + [(f"{FOLDER}/{n}", pickles[n]) for n in (META, *ROWS)]:
            info = tarfile.TarInfo(name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if data is None:
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, DIR_MTIME
                t.addfile(info)
            else:
                info.size, info.mode, info.mtime = len(data), 0o644, FILE_MTIME
                t.addfile(info, io.BytesIO(data))
    return f.getvalue()


def gzip_bytes(tar: bytes) -> tuple[bytes, str]:
    """``gzip -n -6`` where GNU gzip is on PATH (the published archive's compressor), else zlib."""
    exe = shutil.which("gzip")
    if exe:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
        if version.startswith("gzip 1."):
            r = subprocess.run([exe, "-n", "-6", "-c"], input=tar, capture_output=True, check=True)
            return r.stdout, "GNU gzip -n -6"
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(tar) + c.flush(), "zlib level 6 (no GNU gzip found)"


def build(src: str | Path, out: str | Path = DEFAULT_OUT) -> dict:
    """Write the subset archive at ``out``; return what was checked. Raises where the contents differ."""
    src, out = Path(src).expanduser(), Path(out)
    if not src.exists():
        raise ManidpError(f"{src} does not exist; give the path of cifar-10-python.tar.gz (from "
                          f"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) or its extracted folder")
    tar = tar_bytes(subset_pickles(read_input(src)))
    tar_sha = hashlib.sha256(tar).hexdigest()
    if tar_sha != TAR_SHA256:
        raise ManidpError(f"{src}: the subset built from it is not the published one (tar sha256 "
                          f"{tar_sha[:16]}..., expected {TAR_SHA256[:16]}...): its first rows are "
                          f"not the original CIFAR-10's; download CIFAR-10 again. Nothing was written")
    archive, compressor = gzip_bytes(tar)
    result = {"out": str(out), "compressor": compressor, "tar_sha256": tar_sha,
              "sha256": hashlib.sha256(archive).hexdigest()}
    result["archive_matches"] = result["sha256"] == ARCHIVE_SHA256
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(archive)
    os.replace(tmp, out)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m manidp.subset", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="cifar-10-python.tar.gz, or its extracted cifar-10-batches-py folder")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help="where to write the subset (default: %(default)s, where the tests look for it)")
    args = p.parse_args(argv)
    try:
        r = build(args.src, args.out)
    except ManidpError as e:
        print(f"manidp: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {r['out']} ({r['compressor']})")
    print(f"contents bit-exact: tar sha256 {r['tar_sha256']} (published {TAR_SHA256})")
    print(f"archive sha256 {r['sha256']}: " + ("the published archive's" if r["archive_matches"] else
          f"differs from the published {ARCHIVE_SHA256} only by its compression"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
