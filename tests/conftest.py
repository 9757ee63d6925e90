import os
from pathlib import Path

import pytest
import torch

# Two threads on a 2-core machine: more would oversubscribe when pytest and torch both run.
torch.set_num_threads(min(2, os.cpu_count() or 1))

from datapaths import MINI, SEARCHED   # $MANIDP_DATA, ../shared/data, resources/data (tests/datapaths.py)


@pytest.fixture(scope="session")
def cifar_mini() -> Path:
    if not MINI.is_file():
        pytest.skip(f"real CIFAR-10 subset cifar10-mini.tgz not found in {SEARCHED} "
                    f"(build it: python -m manidp.subset cifar-10-python.tar.gz)")
    return MINI
