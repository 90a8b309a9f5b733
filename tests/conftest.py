import os

import pytest
import torch

# Triton runs on CPU tensors only in its interpreter, which must be chosen before
# triton.jit decorates the kernels (at import of mixpath.kernels).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer sweeps, run with `pytest -m slow`")
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
