import os

import pytest
import torch

# One intra-op thread: the suite's numbers do not depend on the machine's core count, and
# parallel workers (lab, distributed tests) do not oversubscribe the CPU.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
