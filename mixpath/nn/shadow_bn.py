"""Shadow BatchNorm: one BatchNorm per number of active paths."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_ROW_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class ShadowRow(nn.Module):
    """One row of a Shadow BN: its own affine parameters and running statistics.

    Separate parameters per row (not one stacked tensor) let an optimizer skip the
    rows a step does not use: their grad stays None, so momentum and weight decay
    leave them exactly as they were.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        with torch.no_grad():
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()


class ShadowBatchNorm2d(nn.Module):
    """`num_shadows` BatchNorm2d rows over the same channels; `forward(x, j)` uses row j - 1.

    `rows[r]` holds row r's weight, bias, running_mean, running_var (C,) and
    num_batches_tracked. In training only row j - 1 is updated. momentum=None
    gives the cumulative average, as in nn.BatchNorm2d. State dicts of the former
    stacked layout (`weight` of shape (num_shadows, C), ...) still load.
    """

    def __init__(self, num_features: int, num_shadows: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__()
        if num_shadows < 1:
            raise ValueError(f"num_shadows must be at least 1; got {num_shadows}")
        self.num_features, self.num_shadows, self.eps, self.momentum = num_features, num_shadows, eps, momentum
        self.rows = nn.ModuleList(ShadowRow(num_features) for _ in range(num_shadows))

    def extra_repr(self):
        return f"{self.num_features}, num_shadows={self.num_shadows}, eps={self.eps}, momentum={self.momentum}"

    def check_paths(self, j: int) -> int:
        if not 1 <= j <= self.num_shadows:
            raise ValueError(f"{j} active paths, but this Shadow BN has rows for 1..{self.num_shadows}")
        return j - 1

    def step(self, j: int) -> float:
        """Count a training batch on row j - 1; return the momentum factor F.batch_norm should use."""
        row = self.rows[self.check_paths(j)]
        if not self.training:
            return 0.0
        row.num_batches_tracked += 1
        if self.momentum is None:
            return 1.0 / float(row.num_batches_tracked)
        return self.momentum

    def row(self, j: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row j - 1's (weight, bias, running_mean, running_var): the tensors themselves, updates land in the row."""
        row = self.rows[self.check_paths(j)]
        return row.weight, row.bias, row.running_mean, row.running_var

    def forward(self, x: torch.Tensor, j: int) -> torch.Tensor:
        momentum = self.step(j)
        weight, bias, mean, var = self.row(j)
        return F.batch_norm(x, mean, var, weight, bias, self.training, momentum, self.eps)

    def reset_row(self, j: int) -> None:
        self.rows[self.check_paths(j)].reset_running_stats()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # The former layout stacked the rows: `weight` (num_shadows, C), ..., `num_batches_tracked` (num_shadows,).
        for name in _ROW_TENSORS:
            stacked = state_dict.pop(prefix + name, None)
            if stacked is None:
                continue
            if len(stacked) != self.num_shadows:
                error_msgs.append(f"{prefix}{name} holds {len(stacked)} Shadow BN rows, this module "
                                  f"{self.num_shadows}: build the network with the checkpoint's max_paths")
            for r, value in enumerate(stacked.unbind(0)):
                state_dict[f"{prefix}rows.{r}.{name}"] = value
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
