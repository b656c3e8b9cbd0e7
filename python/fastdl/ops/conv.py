"""2-D convolution on fastdl's kernels.

fastdl.ops.conv2d takes torch.nn.functional.conv2d's arguments and returns its result: the
cross-correlation of input (N, C, H, W) or (C, H, W) with weight (K, C/groups, R, S), plus bias (K,).
padding is a number, a pair, 'valid' (none) or 'same' (output as large as the input; stride 1 only;
an odd total padding puts the extra row and column at the bottom and right, as torch does). The
output is channels_last when the input or the weight is. Dtypes: float32 and float64 on CPU and
CUDA, float16 and bfloat16 on CUDA (accumulated in float32).

algorithm picks the kernel: 'direct', or 'auto' (today always direct; the Winograd kernels will be
chosen here for the 3x3 shapes they win on).

The autograd formula is registered in C++ (csrc/autograd/conv2d.cpp); below are the fake kernels
for torch.compile and export.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._prims_common import suggest_memory_format

__all__ = ["ALGORITHMS", "conv2d"]

ALGORITHMS = ("auto", "direct")

IntOrPair = int | Sequence[int]


def _pair(value: IntOrPair, name: str) -> list[int]:
    if isinstance(value, int):
        return [value, value]
    values = list(value)
    if len(values) in (1, 2) and all(isinstance(v, int) for v in values):
        return [values[0], values[-1]]
    raise ValueError(f"fastdl.conv2d: {name} must be an int or a pair of ints, but got {value!r}")


def _same_padding(input: Tensor, weight: Tensor, stride: list[int], dilation: list[int]):
    """torch's padding='same': returns the input (padded at the bottom/right where the total padding
    is odd) and the symmetric padding to convolve with."""
    if stride != [1, 1]:
        raise ValueError("fastdl.conv2d: padding='same' is not supported for strided convolutions")
    if weight.dim() != 4:
        raise ValueError(f"fastdl.conv2d: expected weight to be 4-D, but got shape {tuple(weight.shape)}")
    padding, extra = [], []
    for d, k in zip(dilation, weight.shape[2:]):
        total = d * (k - 1)
        padding.append(total // 2)
        extra.append(total - 2 * (total // 2))
    if any(extra):
        input = F.pad(input, [0, extra[1], 0, extra[0]])
    return input, padding


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    algorithm: str = "auto",
) -> Tensor:
    """2-D convolution (cross-correlation), as torch.nn.functional.conv2d."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"fastdl.conv2d: algorithm must be one of {ALGORITHMS}, but got {algorithm!r}")
    stride_, dilation_ = _pair(stride, "stride"), _pair(dilation, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            padding_ = [0, 0]
        elif padding == "same":
            input, padding_ = _same_padding(input, weight, stride_, dilation_)
        else:
            raise ValueError(f"fastdl.conv2d: padding must be a number, a pair, 'valid' or 'same', "
                             f"but got {padding!r}")
    else:
        padding_ = _pair(padding, "padding")
    if not isinstance(groups, int):
        raise ValueError(f"fastdl.conv2d: groups must be an int, but got {groups!r}")
    return torch.ops.fastdl.conv2d(input, weight, bias, stride_, padding_, dilation_, groups)


# ---- fake kernels: output shapes and memory formats ------------------------------------------------


def _memory_format(input: Tensor, weight: Tensor) -> torch.memory_format:
    """The format the kernels write: channels_last when the input or the weight is (batched input)."""
    if input.dim() == 4 and torch.channels_last in (suggest_memory_format(input), suggest_memory_format(weight)):
        return torch.channels_last
    return torch.contiguous_format


def _out_size(size, kernel, stride, pad, dilation):
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


@torch.library.register_fake("fastdl::conv2d")
def _conv2d_fake(input, weight, bias=None, stride=(1,), padding=(0,), dilation=(1,), groups=1):
    s, p, d = (_pair(list(v), name) for v, name in ((stride, "stride"), (padding, "padding"), (dilation, "dilation")))
    oh = _out_size(input.shape[-2], weight.shape[2], s[0], p[0], d[0])
    ow = _out_size(input.shape[-1], weight.shape[3], s[1], p[1], d[1])
    sizes = [*input.shape[:-3], weight.shape[0], oh, ow]
    return torch.empty(sizes, dtype=input.dtype, device=input.device, memory_format=_memory_format(input, weight))


@torch.library.register_fake("fastdl::conv2d_backward")
def _conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
    def empty():
        return input.new_empty((0,))

    grad_input = (torch.empty(input.shape, dtype=input.dtype, device=input.device,
                              memory_format=_memory_format(input, weight)) if output_mask[0] else empty())
    grad_weight = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device) if output_mask[1] else empty()
    grad_bias = weight.new_empty((weight.shape[0],)) if output_mask[2] else empty()
    return grad_input, grad_weight, grad_bias
