"""One op case on one backend as timeable calls: forward, backward, forward + backward.

Backends are the registry's names plus COMPILE, torch.compile of the
`reference` backend: what a user without mixpath's kernels would reach for.
"""
from __future__ import annotations

import functools

import torch

from mixpath.ops import available_backends, backend_status, mixed_depthwise_bn
from mixpath.ops.testing import OpCase, make_inputs

from .cases import device_type

COMPILE = "compile"
LABELS = {COMPILE: "torch.compile(reference)"}


def compile_mode(device) -> str:
    return "max-autotune-no-cudagraphs" if device_type(device) == "cuda" else "default"


def skip_reason(backend: str, device) -> str | None:
    """Why `backend` is not timed on `device` now, or None. Asked at run time: backends come and go."""
    if backend == COMPILE:
        return None
    if backend not in available_backends(device):
        return backend_status(device)[backend]
    if backend == "triton" and device_type(device) == "cpu":
        return "Triton on CPU runs in its interpreter, a correctness tool: not timed"
    return None


def timed_backends(device) -> list[str]:
    """The registered backends timed on `device` right now, in the registry's order."""
    return [name for name in available_backends(device) if skip_reason(name, device) is None]


def _op(backend: str, device):
    if backend == COMPILE:
        # A fresh compilation per case with static shapes: no recompile limit is
        # hit across cases, and no case gets a dynamic-shape kernel.
        torch._dynamo.reset()
        return torch.compile(functools.partial(mixed_depthwise_bn, backend="reference"),
                             mode=compile_mode(device), dynamic=False)
    return functools.partial(mixed_depthwise_bn, backend=backend)


class OpWorkload:
    """Inputs of `case` on `device` (testing.make_inputs) and the op of `backend`, in training mode."""

    def __init__(self, backend: str, case: OpCase, device, seed: int = 0):
        inputs = make_inputs(case, device, seed)
        self.case = case
        self.x = inputs["x"].requires_grad_()
        self.weights = [w.requires_grad_() for w in inputs["weights"]]
        self.bn_weight = inputs["bn_weight"].requires_grad_()
        self.bn_bias = inputs["bn_bias"].requires_grad_()
        self.running_mean, self.running_var, self.dy = inputs["running_mean"], inputs["running_var"], inputs["dy"]
        self.leaves = [self.x, *self.weights, self.bn_weight, self.bn_bias]
        self._op = _op(backend, device)

    def forward(self) -> torch.Tensor:
        c = self.case
        return self._op(self.x, self.weights, self.bn_weight, self.bn_bias, self.running_mean, self.running_var,
                        stride=c.stride, training=c.training, momentum=c.momentum, eps=c.eps, activation=c.activation)

    def backward(self, y: torch.Tensor):
        # autograd.grad, not .backward: repeated calls must not add into .grad (an extra pass over x)
        return torch.autograd.grad(y, self.leaves, self.dy)

    def forward_backward(self):
        return self.backward(self.forward())

    def phase(self, name: str):
        """(target, setup) for cases.PHASES: time target(*setup()); the backward's forward runs in setup."""
        if name == "fwd":
            return self.forward, None
        if name == "bwd":
            return self.backward, lambda: (self.forward(),)
        if name == "fwdbwd":
            return self.forward_backward, None
        raise ValueError(f"unknown phase {name!r}")

    def inputs(self) -> list[torch.Tensor]:
        """Tensors that exist before any call, whichever backend runs (left out of activation memory)."""
        return [*self.leaves, self.running_mean, self.running_var, self.dy]
