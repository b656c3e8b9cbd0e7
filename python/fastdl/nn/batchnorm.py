"""Drop-in batch normalization layers: subclasses of torch.nn.BatchNorm1d and BatchNorm2d (same
constructor, parameters, buffers, state_dict keys and loading of old checkpoints) whose forward runs
fastdl's kernels. BatchNorm1d takes (N, C) or (N, C, L); BatchNorm2d takes (N, C, H, W)."""

from __future__ import annotations

import torch
from torch import Tensor

from fastdl import ops
from fastdl.nn._fallback import fall_back, kernel_gap


def _forward(layer: torch.nn.modules.batchnorm._BatchNorm, input: Tensor, parent_forward) -> Tensor:
    """torch.nn's _BatchNorm.forward with the normalization on fastdl's kernel."""
    layer._check_input_dim(input)
    if (gap := kernel_gap(input)) is not None:
        fall_back(layer, gap)
        return parent_forward(input)
    momentum = 0.0 if layer.momentum is None else layer.momentum
    if layer.training and layer.track_running_stats and layer.num_batches_tracked is not None:
        layer.num_batches_tracked.add_(1)
        if layer.momentum is None:  # a cumulative moving average
            momentum = 1.0 / float(layer.num_batches_tracked)
    # Eval without running statistics normalizes with the batch's, as torch does.
    use_batch_stats = layer.training or (layer.running_mean is None and layer.running_var is None)
    keep_running = not layer.training or layer.track_running_stats
    return ops.batch_norm(input, layer.running_mean if keep_running else None,
                          layer.running_var if keep_running else None, layer.weight, layer.bias,
                          use_batch_stats, momentum, layer.eps)


class BatchNorm1d(torch.nn.BatchNorm1d):
    def forward(self, input: Tensor) -> Tensor:
        return _forward(self, input, super().forward)


class BatchNorm2d(torch.nn.BatchNorm2d):
    def forward(self, input: Tensor) -> Tensor:
        return _forward(self, input, super().forward)
