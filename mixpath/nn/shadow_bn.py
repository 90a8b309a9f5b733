"""Shadow BatchNorm: one BatchNorm per number of active paths."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShadowBatchNorm2d(nn.Module):
    """`num_shadows` BatchNorm2d rows over the same channels; `forward(x, j)` uses row j - 1.

    weight, bias, running_mean, running_var: (num_shadows, C); num_batches_tracked:
    (num_shadows,). In training only row j - 1 is updated. momentum=None gives
    the cumulative average, as in nn.BatchNorm2d.
    """

    def __init__(self, num_features: int, num_shadows: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__()
        if num_shadows < 1:
            raise ValueError(f"num_shadows must be at least 1; got {num_shadows}")
        self.num_features, self.num_shadows, self.eps, self.momentum = num_features, num_shadows, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_shadows, num_features))
        self.bias = nn.Parameter(torch.zeros(num_shadows, num_features))
        self.register_buffer("running_mean", torch.zeros(num_shadows, num_features))
        self.register_buffer("running_var", torch.ones(num_shadows, num_features))
        self.register_buffer("num_batches_tracked", torch.zeros(num_shadows, dtype=torch.long))

    def extra_repr(self):
        return f"{self.num_features}, num_shadows={self.num_shadows}, eps={self.eps}, momentum={self.momentum}"

    def check_paths(self, j: int) -> int:
        if not 1 <= j <= self.num_shadows:
            raise ValueError(f"{j} active paths, but this Shadow BN has rows for 1..{self.num_shadows}")
        return j - 1

    def step(self, j: int) -> float:
        """Count a training batch on row j - 1; return the momentum factor F.batch_norm should use."""
        row = self.check_paths(j)
        if not self.training:
            return 0.0
        self.num_batches_tracked[row] += 1
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked[row])
        return self.momentum

    def row(self, j: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views of row j - 1: (weight, bias, running_mean, running_var); updates through them land in the row."""
        r = self.check_paths(j)
        return self.weight[r], self.bias[r], self.running_mean[r], self.running_var[r]

    def forward(self, x: torch.Tensor, j: int) -> torch.Tensor:
        momentum = self.step(j)
        weight, bias, mean, var = self.row(j)
        return F.batch_norm(x, mean, var, weight, bias, self.training, momentum, self.eps)

    def reset_row(self, j: int) -> None:
        r = self.check_paths(j)
        with torch.no_grad():
            self.running_mean[r].zero_()
            self.running_var[r].fill_(1.0)
            self.num_batches_tracked[r].zero_()
