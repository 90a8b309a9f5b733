"""One differentiable search step, fused (one merged conv per layer) against separate convs (differentiable_bench).

Speed is reported, never asserted; both computations must give the same loss.
"""
import pytest
import torch

from mixpath.ops import default_backend

from .differentiable_bench import SearchStep


@pytest.mark.parametrize("method", ["separate convs", "fused"])
def test_search_step(benchmark, method):
    fused = method == "fused"
    backend = default_backend("cpu") if fused else "reference"
    step = SearchStep("tiny", 0.5, 8, 8, "cpu", backend, literal=not fused)
    benchmark.group = "differentiable search step, tiny k3579 w0.5 batch 8"
    benchmark.extra_info.update(backend=backend)
    first = step()  # one step from the same start: the two computations agree
    reference = SearchStep("tiny", 0.5, 8, 8, "cpu", "reference", literal=True)()
    assert torch.allclose(first, reference, rtol=1e-4), (first, reference)
    loss = benchmark.pedantic(step, rounds=3, warmup_rounds=1, iterations=1)
    assert torch.isfinite(loss)
