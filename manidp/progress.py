"""Progress counted in instances, so the rate reads img/s and the ETA is real.

On a terminal: tqdm bars (on stderr). With --quiet and stdout a log (not a terminal, as in every DAG
step): no bar, but one line per quarter of each pass on stdout, beside the epoch lines
(:class:`LineProgress`; stderr stays for the one error line, docs/errors.md), and every epoch's
summary line ends with its time, training images/s, the run's elapsed time and ETA (:class:`RunClock`).
"""
from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm

QUARTERS = 4            # LineProgress: lines per pass


def progress(total: int | None, desc: str, disable: bool = False):
    """A tqdm bar; with ``disable`` (--quiet), a :class:`LineProgress` where stdout is a log, else nothing."""
    interactive = sys.stderr.isatty()
    if disable and not sys.stdout.isatty() and total and os.environ.get("RANK", "0") == "0":   # torchrun: rank 0 only
        return LineProgress(total, desc)
    # In a log file (no terminal) refresh rarely so logs stay readable.
    return tqdm(total=total, desc=desc, unit="img", unit_scale=True, dynamic_ncols=interactive,
                leave=interactive, disable=disable, mininterval=1.0 if interactive else 30.0,
                file=sys.stderr)


def duration(seconds: float) -> str:
    """12:03, or 1:02:03 from an hour on (tqdm's format)."""
    return tqdm.format_interval(seconds)


class LineProgress:
    """tqdm's interface (update, set_postfix, close, with) for a log: a line each time the pass crosses
    a quarter of ``total`` instances, e.g. ``prune epoch 3/5: 50% (5,000/10,000 img), 412 img/s,
    elapsed 00:12, ETA 00:12``."""

    def __init__(self, total: int, desc: str, parts: int = QUARTERS, file=None, clock=time.monotonic):
        self.total, self.desc, self.parts, self.clock = int(total), desc, parts, clock
        self.file = file or sys.stdout
        self.n, self.shown, self.started = 0, 0, clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        reached = min(self.parts, self.n * self.parts // self.total)
        if reached > self.shown:
            self.shown = reached
            print(self.line(), file=self.file, flush=True)

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.n / elapsed
        eta = (self.total - self.n) / rate if rate > 0 else 0.0
        return (f"{self.desc}: {100 * self.n // self.total}% ({self.n:,}/{self.total:,} img), {rate:,.0f} img/s, "
                f"elapsed {duration(elapsed)}, ETA {duration(eta)}")

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RunClock:
    """Wall time of a run's epochs: :meth:`epoch_line` after each says how long the epoch took (and
    how fast it trained), how long the run has taken, and the ETA of its remaining epochs from the mean
    epoch so far (training, thresholds, evaluation and checkpoint included)."""

    def __init__(self, epochs_left: int, images_per_epoch: int, clock=time.monotonic):
        self.left, self.images, self.clock = epochs_left, images_per_epoch, clock
        self.started = clock()
        self.epoch_started = self.train_seconds = 0.0
        self.done = 0

    def start_epoch(self) -> None:
        self.epoch_started = self.clock()

    def trained(self) -> None:
        """The epoch's training steps are done (before thresholds, evaluation, checkpoint)."""
        self.train_seconds = self.clock() - self.epoch_started

    def epoch_line(self) -> str:
        now = self.clock()
        self.done += 1
        elapsed = now - self.started
        eta = elapsed / self.done * max(self.left - self.done, 0)
        rate = self.images / self.train_seconds if self.train_seconds > 0 else 0.0
        return (f"{now - self.epoch_started:.1f} s ({rate:,.0f} img/s) | elapsed {duration(elapsed)}, "
                f"ETA {duration(eta)}")
