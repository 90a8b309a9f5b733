"""BNAS-v2's confident learning rate for the architecture logits.

Early in training the weights are poor, so the logits' gradients are unreliable
and tend to favour whatever learns fastest (in cell spaces, parameter-free
operations; here, the cheapest kernels). The confidence ((epoch + 1) / E) ** p
grows from nearly 0 to 1, so the logits move little until the weights can be
trusted. BNAS-v2's code: p = 2, lr 3e-4 * confidence, Adam betas (0.5, 0.999),
weight decay 1e-3.
"""
from __future__ import annotations

__all__ = ["confidence", "arch_lr"]


def confidence(epoch: int, epochs: int, power: float) -> float:
    """((epoch + 1) / epochs) ** power for the 0-based `epoch`; power 0 gives 1 (a constant rate)."""
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch {epoch} is outside 0..{epochs - 1}")
    return ((epoch + 1) / epochs) ** power


def arch_lr(base: float, epoch: int, epochs: int, power: float, confident: bool = True) -> float:
    """The architecture learning rate of `epoch`: base * confidence, or base alone when not `confident`."""
    return base * confidence(epoch, epochs, power) if confident else base
