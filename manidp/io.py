"""Atomic file writes: a crash mid-write never replaces a good file with a half-written one.

A write goes to ``.<name>.<random>.tmp`` beside the file and is renamed over it when complete, so
readers see either the old file or the new one. A failed write (disk full, no permission) leaves
the old file as it was and raises :class:`~manidp.errors.ManidpError` naming the folder; a write
killed outright (SIGKILL) leaves its temporary file, which the next run in that folder removes
(:func:`manidp.runfolder.claim`).
"""
from __future__ import annotations

import errno
import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable

from .errors import ManidpError

_FULL = (errno.ENOSPC, errno.EDQUOT)


def temp_name(path: Path) -> Path:
    """The temporary file a write of ``path`` goes through (the pattern runfolder.py cleans up)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write through ``write(fileobj)`` into a temporary file beside ``path``, fsync, then rename.

    ``os.replace`` is atomic on POSIX. The file is created as ``open()`` would create it (mode
    0666 less the umask; ``tempfile.mkstemp`` would make it 0600, unreadable to collaborators).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while tmp is None:
            try:
                tmp = temp_name(path)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                tmp = None
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _discard(tmp)
        raise ManidpError(write_error(path, e)) from None
    except BaseException:
        _discard(tmp)
        raise
    return path


def write_error(path: Path, e: OSError) -> str:
    """One line for a failed write of ``path``: the folder, what happened, what to do."""
    if e.errno in _FULL:
        return (f"{path.parent}: the disk is full (no space left) while writing {path.name}; the previous "
                f"{path.name} is kept as it was: free space and rerun the same command (a run resumes "
                f"from its last checkpoint)")
    return (f"{path.parent}: cannot write {path.name} ({e.strerror or type(e).__name__}); check that the "
            f"folder is writable and has free space, then rerun the same command")


def _discard(tmp: Path | None) -> None:
    try:
        if tmp is not None:
            os.unlink(tmp)
    except OSError:
        pass      # never created, or already gone: nothing to clean


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n"
    return atomic_write(path, lambda f: f.write(text), mode="w")


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
