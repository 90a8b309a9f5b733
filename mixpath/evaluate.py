"""Scoring architectures with a trained supernet: BN recalibration, then accuracy."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from .calibrate import calibrate_bn, statistics_restored


def accuracy(net: nn.Module, arch, batches: Iterable) -> float:
    """Top-1 accuracy of `arch` (None for a SubNet) over (input, target) batches, in eval mode."""
    arch = net.check_arch(arch)
    was_training = net.training
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            correct += (net(x, arch).argmax(1) == y).sum().item()
            total += y.numel()
    net.train(was_training)
    if total == 0:
        raise ValueError("accuracy got no batches to evaluate")
    return correct / total


def score_arch(net: nn.Module, arch, calibration: Callable[[], Iterable], validation: Callable[[], Iterable]) -> float:
    """Validation accuracy of `arch` after recalibrating the BN rows it uses on training batches.

    `net` is left exactly as it was: the recalibrated statistics live only while
    scoring. `calibration` and `validation` return fresh iterables of batches
    (each call starts over), so many architectures can be scored in a row.
    """
    with statistics_restored(net, arch) as arch:
        calibrate_bn(net, arch, calibration())
        return accuracy(net, arch, validation())
