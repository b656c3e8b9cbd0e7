"""Drop-in pooling layers: subclasses of the torch.nn layers (same constructor, attributes, repr and
state_dict) whose forward runs fastdl's kernels. Shapes: (N, C, H, W) or (C, H, W)."""

from __future__ import annotations

import torch
from torch import Tensor

from fastdl import ops
from fastdl.nn._fallback import fall_back, kernel_gap


class MaxPool2d(torch.nn.MaxPool2d):
    def forward(self, input: Tensor):
        if (gap := kernel_gap(input)) is not None:
            fall_back(self, gap)
            return super().forward(input)
        return ops.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                              ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(torch.nn.AvgPool2d):
    def forward(self, input: Tensor) -> Tensor:
        if (gap := kernel_gap(input)) is not None:
            fall_back(self, gap)
            return super().forward(input)
        return ops.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                              self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    def forward(self, input: Tensor) -> Tensor:
        if (gap := kernel_gap(input)) is not None:
            fall_back(self, gap)
            return super().forward(input)
        return ops.adaptive_avg_pool2d(input, self.output_size)
