"""Batch normalization on fastdl's kernels.

fastdl.ops.batch_norm takes torch.nn.functional.batch_norm's arguments and returns its result.
Shapes: input (N, C), (N, C, L) or (N, C, H, W), any memory layout (the output keeps a
channels_last input's format); more dimensions, as (N, C, D, H, W), are normalized as (N, C, D*H*W)
(a contiguous output); weight, bias, running_mean, running_var: (C,). Dtypes: float32 and
float64 on CPU and CUDA; float16 and bfloat16 on CUDA, whose statistics are float32 and whose
parameters may be float32 too.

Training normalizes with the batch's mean and biased variance and, when running statistics are
given, updates them in place: running = (1 - momentum) * running + momentum * batch, with the
unbiased variance. Eval normalizes with the running statistics. The autograd formula is registered
in C++ (csrc/autograd/batch_norm.cpp); below is the fake kernel for torch.compile and export.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastdl.ops._eager import ops_for
from fastdl.ops._layout import empty_like_layout

__all__ = ["batch_norm", "batch_norm_relu_inference"]


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalization over the channel dimension (dim 1), as torch.nn.functional.batch_norm."""
    if input.dim() > 4:
        # (N, C, D, H, W, ...): the dimensions after C as one (a view unless the input's strides mix them).
        out = batch_norm(input.flatten(2), running_mean, running_var, weight, bias, training, momentum, eps)
        return out.view(input.shape)
    out, _, _ = ops_for(input).batch_norm(input, weight, bias, running_mean, running_var, bool(training),
                                          float(momentum), float(eps))
    return out


def batch_norm_relu_inference(
    input: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """relu(batch_norm(input, ..., training=False)) in one pass over the data. Not differentiable:
    for inference (fastdl.fuse_conv_bn uses it where a BatchNorm feeds only a ReLU)."""
    return ops_for(input).batch_norm_relu_inference(input, weight, bias, running_mean, running_var, float(eps))


def _stats_dtype(input: Tensor) -> torch.dtype:
    return torch.float64 if input.dtype == torch.float64 else torch.float32


@torch.library.register_fake("fastdl::batch_norm")
def _batch_norm_fake(input, weight, bias, running_mean, running_var, training, momentum, eps):
    channels = input.shape[1]
    stats = input.new_empty((channels,), dtype=_stats_dtype(input))
    return empty_like_layout(input, input.shape), stats, torch.empty_like(stats)


@torch.library.register_fake("fastdl::batch_norm_backward")
def _batch_norm_backward_fake(grad_output, input, weight, save_mean, save_invstd, training, output_mask):
    channels = input.shape[1]
    param_dtype = weight.dtype if weight is not None else input.dtype
    grad_input = empty_like_layout(input, input.shape) if output_mask[0] else input.new_empty((0,))
    grad_params = [input.new_empty((channels,) if wanted else (0,), dtype=param_dtype) for wanted in output_mask[1:]]
    return grad_input, *grad_params


@torch.library.register_fake("fastdl::batch_norm_relu_inference")
def _batch_norm_relu_inference_fake(input, weight, bias, running_mean, running_var, eps):
    return empty_like_layout(input, input.shape)
