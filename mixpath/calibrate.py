"""BN recalibration: re-estimate the running statistics an architecture uses before scoring it."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .nn.shadow_bn import ShadowBatchNorm2d


def calibrate_bn(net: nn.Module, arch, batches: Iterable) -> int:
    """Reset the running statistics of the BN rows `arch` uses and re-estimate them.

    `net` is a SuperNet (or a SubNet, with arch None); `batches` yields input
    tensors or (input, target) pairs of training data. The statistics become the
    plain average over the batches (momentum None while calibrating); other rows
    and parameters are untouched. Returns the number of batches used.
    """
    used = net.batchnorms(arch)
    saved = []
    for bn, j in used:
        saved.append((bn, bn.momentum))
        bn.momentum = None
        if isinstance(bn, ShadowBatchNorm2d):
            bn.reset_row(j)
        else:
            bn.reset_running_stats()
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
