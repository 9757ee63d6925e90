import os
from pathlib import Path

import pytest
import torch

# Two threads on a 2-core machine: more would oversubscribe when pytest and torch both run.
torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR_MINI = SHARED_DATA / "cifar10-mini.tgz"


@pytest.fixture(scope="session")
def cifar_mini() -> Path:
    if not CIFAR_MINI.is_file():
        pytest.skip(f"real CIFAR-10 subset not found at {CIFAR_MINI}")
    return CIFAR_MINI
