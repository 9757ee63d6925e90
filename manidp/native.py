"""Build and load the C kernel of the channel-skipping engine (``kernels/skip_block.c`` and the
headers it includes: ``kernels/gemm.h``, ``maps.h``, ``stem.h``).

The kernel is compiled on first use with the machine's C compiler (``$CC``, else ``cc``) for the CPU
it runs on (``-march=native``) and cached under ``$MANIDP_CACHE`` (default ``~/.cache/manidp``),
keyed by the sources (the .c file and every header beside it), the compiler and the CPU's feature
flags, so a cache shared by different machines never hands one of them code for another's
instruction set, and an edited header never leaves a stale build in use. It is linked against OpenMP;
PyTorch has loaded its own ``libgomp.so.1`` by then, so the kernel shares PyTorch's thread pool.

``load()`` returns the library or ``None`` (no compiler, compile error, ``MANIDP_NATIVE=0``);
``why_unavailable()`` says why. The engine then falls back to its PyTorch kernels.
``MANIDP_CFLAGS`` adds compiler flags (e.g. ``-mno-avx512f`` builds the AVX2 variant).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("kernels") / "skip_block.c"
SLACK = 128          # floats after every padded-planar map: skip_block.c's SLACK, checked at load
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=gnu11",
         *os.environ.get("MANIDP_CFLAGS", "").split()]

_lib: ctypes.CDLL | None = None
_reason: str | None = None


class BlockWeights(ctypes.Structure):
    """``block_t`` of skip_block.c, field for field."""
    _fields_ = ([(k, ctypes.c_int64) for k in ("c_in", "c_mid", "c_out", "stride", "hid1", "hid2")]
                + [(k, ctypes.c_void_p) for k in ("wa", "ba", "wb", "bb", "g1_fc1_t", "g1_fc2_t",
                                                   "g1_fc2_b", "g2_fc1_t", "g2_fc2_t", "g2_fc2_b",
                                                   "ws", "bs")]
                + [(k, ctypes.c_float) for k in ("g1_threshold", "g1_clamp", "g2_threshold",
                                                 "g2_clamp")])


class StemWeights(ctypes.Structure):
    """``stem_t`` of skip_block.c, field for field."""
    _fields_ = ([(k, ctypes.c_void_p) for k in ("w", "b")]
                + [(k, ctypes.c_int64) for k in ("c_in", "c_out", "k", "stride", "pad", "maxpool")])


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def cpu_isa() -> str:
    """The widest x86 vector ISA this CPU reports (``AVX-512``, ``AVX2``), else its architecture."""
    flags = set(_cpu_flags().split())
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags and "fma" in flags:
        return "AVX2"
    return platform.machine()


def kernel_isa() -> str | None:
    """The vector ISA the loaded kernel was compiled for (``AVX-512``, ``AVX2``, ``generic``): with
    ``MANIDP_CFLAGS=-mno-avx512f`` on an AVX-512 machine it is ``AVX2``. ``None`` without a kernel."""
    lib = load()
    return lib.manidp_isa().decode() if lib is not None else None


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _build(cc: str) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    sources = [SOURCE.read_text(), *(h.read_text() for h in sorted(SOURCE.parent.glob("*.h")))]
    key = hashlib.sha256("\0".join([*sources, " ".join(FLAGS), version, _cpu_flags(),
                                    platform.machine()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("MANIDP_CACHE", Path.home() / ".cache" / "manidp")) / "kernels"
    target = cache / f"skip_block-{key}.so"
    if target.is_file():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:                      # read-only home (some clusters): a private temp folder
        cache = Path(tempfile.gettempdir()) / f"manidp-kernels-{os.getuid()}"
        cache.mkdir(exist_ok=True)
        target = cache / target.name
        if target.is_file():
            return target
    # Compile to a private name, then rename: concurrent builds never load a half-written file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    try:
        res = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{cc} failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load() -> ctypes.CDLL | None:
    """The compiled kernel library, building it if needed; ``None`` if it cannot be had."""
    global _lib, _reason
    if _lib is not None or _reason is not None:
        return _lib
    import torch  # noqa: F401  (PyTorch's libgomp must be loaded first: one OpenMP runtime)
    if os.environ.get("MANIDP_NATIVE", "1") == "0":
        _reason = "disabled by MANIDP_NATIVE=0"
        return None
    cc = _compiler()
    if cc is None:
        _reason = "no C compiler found (set CC or install gcc)"
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except (OSError, RuntimeError) as e:
        _reason = f"could not build {SOURCE.name}: {e}"
        return None
    lib.manidp_block.restype = ctypes.c_int64
    lib.manidp_block.argtypes = [ctypes.POINTER(BlockWeights), ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                                 ctypes.POINTER(ctypes.c_int64), ctypes.c_void_p, ctypes.c_void_p]
    lib.manidp_slack.restype = ctypes.c_int64
    lib.manidp_isa.restype = ctypes.c_char_p
    if lib.manidp_slack() != SLACK:
        _reason = f"{SOURCE.name} was built with SLACK={lib.manidp_slack()}, manidp.native expects {SLACK}"
        return None
    lib.manidp_stem.restype = ctypes.c_int64
    lib.manidp_stem.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    lib.manidp_forward.restype = ctypes.c_int
    lib.manidp_forward.argtypes = [ctypes.POINTER(StemWeights), ctypes.POINTER(BlockWeights),
                                   ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                   ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                   ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_void_p,
                                   ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.manidp_pool.restype = None
    lib.manidp_pool.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                ctypes.c_void_p]
    _lib = lib
    return lib


def why_unavailable() -> str | None:
    """Why :func:`load` returned ``None`` (after calling it), else ``None``."""
    load()
    return _reason
