"""Output allocation for fake kernels: the memory format the C++ kernels write."""

from __future__ import annotations

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format


def empty_like_layout(input: Tensor, sizes, dtype: torch.dtype | None = None) -> Tensor:
    """An empty output in the layout the kernels write: the input's suggested memory format for a
    4-D input, contiguous otherwise."""
    fmt = suggest_memory_format(input) if input.dim() == 4 else torch.contiguous_format
    return torch.empty(sizes, dtype=dtype or input.dtype, device=input.device, memory_format=fmt)
