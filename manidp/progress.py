"""Progress bars counted in instances, so the rate reads img/s and the ETA is real."""
from __future__ import annotations

import sys

from tqdm import tqdm


def progress(total: int | None, desc: str, disable: bool = False) -> tqdm:
    # In a log file (no terminal) refresh rarely so logs stay readable.
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", unit_scale=True, dynamic_ncols=interactive,
                leave=interactive, disable=disable, mininterval=1.0 if interactive else 30.0,
                file=sys.stderr)
