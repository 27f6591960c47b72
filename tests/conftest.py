import os

import pytest
import torch

# One intra-op thread: the suite's numbers do not depend on the machine's core count, and
# parallel workers (lab, distributed tests) do not oversubscribe the CPU.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state, whatever ran before it: torch's generator,
    and the stochastic-rounding noise pool (drawn from it on first use, then reused)."""
    from decoupled.formats.rounding import NOISE

    torch.manual_seed(0)
    NOISE.reset()


@pytest.fixture(autouse=True)
def _compiled_kernel_for_every_size(monkeypatch):
    """The compiled backend hands tensors under MIN_NUMEL elements to the fused backend; the
    tests' tensors are small, so the kernel takes every size here (test_backend_compiled.py
    checks the split at the real threshold)."""
    from decoupled.backends import compiled

    monkeypatch.setattr(compiled, "MIN_NUMEL", 0)
