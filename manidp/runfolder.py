"""Owning a run folder: one run at a time, and no stale temporary files left behind.

``manidp train-baseline`` and ``manidp prune`` write ``checkpoint.pt``, ``history.jsonl``,
``metrics.json``, ``config.json`` and ``env.json`` into ``--out``. Two runs on one folder would
overwrite each other's checkpoints, so a run holds an exclusive ``flock`` on ``<out>/.manidp.lock``
while it runs and writes its pid there; a second run is refused with one line naming the folder
and that pid. The kernel drops the lock when its process ends, however it ends (SIGKILL included),
so a lock file left by a killed run never blocks the rerun.

Once it holds the lock, a run removes the temporary files (``.<name>.<random>.tmp``, io.py) that a
killed write of one of its own files left; no other file is touched.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from pathlib import Path
from typing import Iterator

from .errors import ManidpError
from .io import write_error

LOCK_NAME = ".manidp.lock"
RUN_FILES = ("checkpoint.pt", "history.jsonl", "metrics.json", "config.json", "env.json")
# io.temp_name's pattern; older versions wrote tempfile.mkstemp's (8 characters of [a-z0-9_])
_STALE = re.compile(rf"^\.({'|'.join(re.escape(n) for n in RUN_FILES)})\.[A-Za-z0-9_]+\.tmp$")


@contextlib.contextmanager
def claim(folder: str | os.PathLike, main: bool = True) -> Iterator[None]:
    """Hold ``folder`` for the duration of the block (only the ``main`` process of a multi-process
    run locks; the others share its claim)."""
    if not main:
        yield
        return
    folder = Path(folder)
    lock = _lock(folder)
    try:
        remove_stale_temps(folder)
        yield
    finally:
        if lock is not None:
            lock.close()             # releases the flock; the file stays, harmless once unlocked


def _lock(folder: Path):
    import fcntl
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
    except OSError as e:
        raise ManidpError(write_error(path, e)) from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "unknown"
        f.close()
        raise ManidpError(f"run folder {folder} is in use by another manidp run (pid {pid}): wait for it "
                          f"to finish, or pass another --out") from None
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            f.close()
            raise ManidpError(write_error(path, e)) from None
        print(f"warning: {folder}: the file system cannot lock files ({e.strerror}); "
              f"do not start a second run on this --out", file=sys.stderr)
        f.close()
        return None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def remove_stale_temps(folder: Path) -> list[str]:
    """Delete ``folder``'s leftover temporary files of RUN_FILES (the caller holds the lock, so no
    write of this folder is in flight); return their names."""
    removed = []
    for entry in os.scandir(folder):
        if entry.is_file(follow_symlinks=False) and _STALE.match(entry.name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(entry.name)
    return sorted(removed)
