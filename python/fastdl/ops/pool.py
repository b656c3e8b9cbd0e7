"""2-D max, average and adaptive average pooling on fastdl's kernels.

The functions take the arguments of their torch.nn.functional namesakes and return the same
results. Shapes: input (N, C, H, W) or (C, H, W); output (N, C, OH, OW) or (C, OH, OW), in the
input's memory format (a channels_last input gives a channels_last output). Dtypes: float32 and
float64 on CPU and CUDA, float16 and bfloat16 on CUDA.

Below the functions: the fake kernels of the torch.ops.fastdl pooling ops (output shapes and memory
formats, for torch.compile and torch.export). Their autograd formulas are registered in C++
(csrc/autograd/pool2d.cpp), where a call that needs no gradient costs nothing extra; double
backward is not supported and raises an error naming the op.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fastdl.ops._args import IntOrPair, int_pair
from fastdl.ops._eager import ops_for
from fastdl.ops._layout import empty_like_layout

__all__ = ["max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "adaptive_avg_pool2d"]

def _stride(stride: IntOrPair | None, kernel: list[int], op: str) -> list[int]:
    if stride is None or (isinstance(stride, Sequence) and len(stride) == 0):
        return kernel
    return int_pair(stride, "stride", op)


def _needs_grad(input: Tensor) -> bool:
    return torch.is_grad_enabled() and input.requires_grad


def max_pool2d(
    input: Tensor,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Max pooling over (N, C, H, W) or (C, H, W), as torch.nn.functional.max_pool2d.

    stride defaults to kernel_size. With return_indices, also returns int64 indices h*W + w of each
    maximum inside its input plane. Ties go to the first maximum in row-major order; NaN propagates.
    """
    k = int_pair(kernel_size, "kernel_size", "max_pool2d")
    args = (k, _stride(stride, k, "max_pool2d"), int_pair(padding, "padding", "max_pool2d"),
            int_pair(dilation, "dilation", "max_pool2d"), bool(ceil_mode))
    if return_indices or _needs_grad(input):
        out, indices = ops_for(input).max_pool2d_with_indices(input, *args)
        return (out, indices) if return_indices else out
    # Inference: no index tensor to write.
    return ops_for(input).max_pool2d(input, *args)


def max_pool2d_with_indices(
    input: Tensor,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    ceil_mode: bool = False,
) -> tuple[Tensor, Tensor]:
    """max_pool2d(..., return_indices=True)."""
    return max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)


def avg_pool2d(
    input: Tensor,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    """Average pooling over (N, C, H, W) or (C, H, W), as torch.nn.functional.avg_pool2d.

    The divisor is divisor_override if given, else the window size counting the zero padding
    (count_include_pad) or only the input elements inside it.
    """
    k = int_pair(kernel_size, "kernel_size", "avg_pool2d")
    return ops_for(input).avg_pool2d(input, k, _stride(stride, k, "avg_pool2d"),
                                     int_pair(padding, "padding", "avg_pool2d"), bool(ceil_mode),
                                     bool(count_include_pad), divisor_override)


def adaptive_avg_pool2d(input: Tensor, output_size: int | None | Sequence[int | None]) -> Tensor:
    """Adaptive average pooling to output_size (OH, OW), as torch.nn.functional.adaptive_avg_pool2d.

    Output cell (i, j) averages input rows [floor(i*H/OH), ceil((i+1)*H/OH)) and the columns
    likewise; None keeps that input size. output_size 1 is global average pooling.
    """
    if output_size is None or isinstance(output_size, int):
        sizes = [output_size, output_size]
    else:
        sizes = list(output_size)
        if len(sizes) == 1:
            sizes = sizes * 2
    if len(sizes) != 2:
        raise ValueError(f"fastdl.adaptive_avg_pool2d: output_size must be an int, None or a pair, "
                         f"but got {output_size!r}")
    if input.dim() < 2:
        raise ValueError(f"fastdl.adaptive_avg_pool2d: expected a 3-D or 4-D input, but got shape "
                         f"{tuple(input.shape)}")
    resolved = [input.shape[-2 + i] if s is None else s for i, s in enumerate(sizes)]
    return ops_for(input).adaptive_avg_pool2d(input, resolved)


# ---- fake kernels: output shapes and memory formats ------------------------------------------------


def _output_size(size, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool):
    """PyTorch's pooling output size (mirrors pool_output_size in csrc/common/pool2d_windows.h)."""
    out = (size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out = out - 1
    return out


def _pooled_sizes(input: Tensor, kernel, stride, padding, dilation, ceil_mode):
    stride = stride if len(stride) else kernel
    k, s, p, d = (int_pair(list(v), "size", "pool") for v in (kernel, stride, padding, dilation))
    oh = _output_size(input.shape[-2], k[0], s[0], p[0], d[0], ceil_mode)
    ow = _output_size(input.shape[-1], k[1], s[1], p[1], d[1], ceil_mode)
    return [*input.shape[:-2], oh, ow]


@torch.library.register_fake("fastdl::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride=(), padding=(0,), dilation=(1,), ceil_mode=False):
    return empty_like_layout(input, _pooled_sizes(input, kernel_size, stride, padding, dilation, ceil_mode))


@torch.library.register_fake("fastdl::max_pool2d_with_indices")
def _max_pool2d_with_indices_fake(input, kernel_size, stride=(), padding=(0,), dilation=(1,), ceil_mode=False):
    sizes = _pooled_sizes(input, kernel_size, stride, padding, dilation, ceil_mode)
    return empty_like_layout(input, sizes), empty_like_layout(input, sizes, torch.int64)


@torch.library.register_fake("fastdl::max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, input, indices, kernel_size, *args):
    return empty_like_layout(input, input.shape)


@torch.library.register_fake("fastdl::avg_pool2d")
def _avg_pool2d_fake(input, kernel_size, stride=(), padding=(0,), ceil_mode=False, count_include_pad=True,
                     divisor_override=None):
    return empty_like_layout(input, _pooled_sizes(input, kernel_size, stride, padding, [1], ceil_mode))


@torch.library.register_fake("fastdl::avg_pool2d_backward")
def _avg_pool2d_backward_fake(grad_output, input, kernel_size, *args):
    return empty_like_layout(input, input.shape)


@torch.library.register_fake("fastdl::adaptive_avg_pool2d")
def _adaptive_avg_pool2d_fake(input, output_size):
    return empty_like_layout(input, [*input.shape[:-2], *output_size])


@torch.library.register_fake("fastdl::adaptive_avg_pool2d_backward")
def _adaptive_avg_pool2d_backward_fake(grad_output, input):
    return empty_like_layout(input, input.shape)
