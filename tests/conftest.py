from __future__ import annotations

import os

import torch

# with pytest-xdist each worker takes one core: two intra-op threads per worker would oversubscribe the CPU
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
