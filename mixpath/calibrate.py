"""BN recalibration: re-estimate the running statistics an architecture uses before scoring it."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

import torch
from torch import nn

from .nn.shadow_bn import ShadowBatchNorm2d


def _statistics_module(bn: nn.Module, j: int | None) -> nn.Module:
    """The module that holds the running statistics of (bn, j) as `net.batchnorms` lists it."""
    return bn.rows[bn.check_paths(j)] if isinstance(bn, ShadowBatchNorm2d) else bn


def calibrate_bn(net: nn.Module, arch, batches: Iterable) -> int:
    """Reset the running statistics of the BN rows `arch` uses and re-estimate them.

    `net` is a SuperNet (arch an Arch or its string; ArchError if it does not fit)
    or a SubNet (arch None); `batches` yields input tensors or (input, target)
    pairs of training data. The statistics become the plain average over the
    batches (momentum None while calibrating); other rows and parameters are
    untouched. Returns the number of batches used.
    """
    arch = net.check_arch(arch)
    used = net.batchnorms(arch)
    saved = []
    for bn, j in used:
        saved.append((bn, bn.momentum))
        bn.momentum = None
        _statistics_module(bn, j).reset_running_stats()
    was_training = net.training
    net.train()
    count = 0
    try:
        with torch.no_grad():
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                net(x, arch)
                count += 1
    finally:
        for bn, momentum in saved:
            bn.momentum = momentum
        net.train(was_training)
    if count == 0:
        raise ValueError("calibrate_bn got no batches; pass at least one batch of training data")
    return count


@contextmanager
def statistics_restored(net: nn.Module, arch):
    """Within the block, change the running statistics `arch` uses freely: on exit they are as they were.

    Saves only the buffers of the BN rows `arch` uses (a few KB), not the network.
    """
    arch = net.check_arch(arch)
    saved = [(buffer, buffer.clone()) for bn, j in net.batchnorms(arch)
             for buffer in _statistics_module(bn, j).buffers()]
    try:
        yield arch
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
