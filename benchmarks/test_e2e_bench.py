"""Supernet training steps with and without the fused backend, same seed and architectures (e2e.py).

On CPU the settings are reduced (e2e.e2e_configs); speed is reported, never
asserted; a step whose loss is not finite fails.
"""
import pytest
import torch

from .cases import PYTEST_DEVICES, pytest_scale
from .e2e import TrainLoop, e2e_backends, e2e_configs

CONFIGS = [(device, config) for device in PYTEST_DEVICES for config in e2e_configs(device, pytest_scale(device))]


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
@pytest.mark.parametrize("device,config", CONFIGS, ids=[f"{d}-{c}" for d, c in CONFIGS])
def test_train_steps(benchmark, device, config, fused):
    backend = e2e_backends(device)[fused]
    loop = TrainLoop(config, backend, device)
    benchmark.group = f"e2e {device} {config}"
    benchmark.extra_info.update(backend=backend, images_per_step=config.batch)
    loss = benchmark.pedantic(loop.synced_step, rounds=config.steps, warmup_rounds=config.warmup, iterations=1)
    assert torch.isfinite(loss), f"{backend}: loss {loss.item()} after {config.warmup + config.steps} steps"
