"""Drop-in convolution layer: a subclass of torch.nn.Conv2d (same constructor, parameters, repr and
state_dict) whose forward runs fastdl's kernels. Shapes: (N, C, H, W) or (C, H, W). padding_mode
other than 'zeros' pads the input first, as torch.nn.Conv2d does."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastdl import ops
from fastdl.nn._fallback import fall_back, kernel_gap


class Conv2d(torch.nn.Conv2d):
    """torch.nn.Conv2d on fastdl's kernels; `algorithm` is fastdl.ops.conv2d's ('auto', 'direct',
    'winograd2' or 'winograd4')."""

    algorithm: str = "auto"  # a layer swapped in by fastdl.convert keeps the default

    def __init__(self, *args, algorithm: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if algorithm not in ops.conv.ALGORITHMS:
            raise ValueError(f"fastdl.nn.Conv2d: algorithm must be one of {ops.conv.ALGORITHMS}, "
                             f"but got {algorithm!r}")
        self.algorithm = algorithm

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if (gap := kernel_gap(input)) is not None:
            fall_back(self, gap)
            return super()._conv_forward(input, weight, bias)
        padding = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return ops.conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups,
                          algorithm=self.algorithm)
