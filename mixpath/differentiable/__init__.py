"""Differentiable multi-path search (BNAS-v2's confident learning rate and partial channels) over MixPath spaces.

Each searchable layer is a softmax over kernels merged into one depthwise conv
by the fused op (layers.py), trained bi-level with the weights (train.py); the
architecture is derived from the weights (derive.py) under the confident
learning rate (schedule.py). `mixpath train --mode differentiable` is cli.py.
"""
from .derive import collapse_stats, derive_arch, plot_weights, read_history
from .layers import ArchitectureLogits, DifferentiableNet, channel_shuffle, weighted_depthwise_bn
from .schedule import arch_lr, confidence
from .train import DifferentiableConfig, split_halves, train_differentiable

__all__ = ["ArchitectureLogits", "DifferentiableConfig", "DifferentiableNet", "arch_lr", "channel_shuffle",
           "collapse_stats", "confidence", "derive_arch", "plot_weights", "read_history", "split_halves",
           "train_differentiable", "weighted_depthwise_bn"]
