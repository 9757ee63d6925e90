"""How a workflow script runs a step: a user-facing error is one line on stderr (and in the
step's log) and exit status 1, never a traceback."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from ..errors import ManidpError


def run(main: Callable[[], object], log: str | None = None) -> None:
    try:
        main()
    except ManidpError as e:
        line = f"manidp: error: {e}"
        print(line, file=sys.stderr, flush=True)
        if log:
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            Path(log).write_text(line + "\n")
        sys.exit(1)
