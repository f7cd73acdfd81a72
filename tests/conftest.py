import os

import pytest
import torch

# Two cores in CI: keep torch from oversubscribing when pytest runs in one process.
torch.set_num_threads(min(2, os.cpu_count() or 1))
# Tests call the `tessera` command in this process: leave glibc's allocator as it is (the setting is
# process-wide; tests/test_hardware.py checks it in child processes).
os.environ.setdefault("TESSERA_ALLOCATOR", "system")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One torch thread for tiny tensors: a second thread only adds start-up and, on a shared CPU, spin-waiting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
