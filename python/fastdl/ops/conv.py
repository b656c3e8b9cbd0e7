"""2-D convolution on fastdl's kernels.

fastdl.ops.conv2d takes torch.nn.functional.conv2d's arguments and returns its result: the
cross-correlation of input (N, C, H, W) or (C, H, W) with weight (K, C/groups, R, S), plus bias (K,).
padding is a number, a pair, 'valid' (none) or 'same' (output as large as the input; stride 1 only;
an odd total padding puts the extra row and column at the bottom and right, as torch does). The
output is channels_last when the input or the weight is. Dtypes: float32 and float64 on CPU and
CUDA, float16 and bfloat16 on CUDA (accumulated in float32).

algorithm picks the kernel: 'direct'; 'winograd2' or 'winograd4', Winograd F(2x2,3x3) or
F(4x4,3x3) for a 3x3 weight, and 'winograd2' for a 5x5 weight on the CPU, F(2x2,5x5) (stride 1,
dilation 1, groups 1, any padding; a ValueError says which condition a shape misses); or 'auto'
(default). 'auto' times the algorithms once per shape when fastdl.backends.benchmark is True, and
otherwise follows choose_algorithm's heuristic.

The autograd formula is registered in C++ (csrc/autograd/conv2d.cpp); below are the fake kernels
for torch.compile and export.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._prims_common import suggest_memory_format

from fastdl import backends
from fastdl.ops._args import IntOrPair, int_pair, is_int
from fastdl.ops._eager import ops_for

__all__ = ["ALGORITHMS", "choose_algorithm", "conv2d", "winograd_5x5_rule", "winograd_gap", "winograd_rule"]

ALGORITHMS = ("auto", "direct", "winograd2", "winograd4")
_WINOGRAD_TILES = {"winograd2": 2, "winograd4": 4}
# Device types with Winograd kernels in this build (meta: shapes only), looked up once; F(2x2,5x5) is
# CPU-only (csrc/common/winograd_ops.h, kFiveByFive).
_WINOGRAD_DEVICES = {"meta"} | {device for device in ("cpu", "cuda") if torch._C._dispatch_has_kernel_for_dispatch_key(
    "fastdl::conv2d_winograd", device.upper())}
_WINOGRAD_5X5_DEVICES = _WINOGRAD_DEVICES & {"cpu", "meta"}


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
    stride_, dilation_ = int_pair(stride, "stride", "conv2d"), int_pair(dilation, "dilation", "conv2d")
    if isinstance(padding, str):
        if padding == "valid":
            padding_ = [0, 0]
        elif padding == "same":
            input, padding_ = _same_padding(input, weight, stride_, dilation_)
        else:
            raise ValueError(f"fastdl.conv2d: padding must be a number, a pair, 'valid' or 'same', "
                             f"but got {padding!r}")
    else:
        padding_ = int_pair(padding, "padding", "conv2d")
    if not is_int(groups):
        raise ValueError(f"fastdl.conv2d: groups must be an int, but got {groups!r}")
    groups = int(groups)
    if algorithm == "auto":
        algorithm = _auto(input, weight, bias, stride_, padding_, dilation_, groups)
    elif algorithm != "direct" and (gap := winograd_gap(input, weight, stride_, dilation_, groups, algorithm)):
        raise ValueError(f"fastdl.conv2d: algorithm={algorithm!r} needs {gap}")
    if algorithm == "direct":
        return ops_for(input).conv2d(input, weight, bias, stride_, padding_, dilation_, groups)
    return ops_for(input).conv2d_winograd(input, weight, bias, padding_, _WINOGRAD_TILES[algorithm])


# ---- algorithm choice --------------------------------------------------------------------------------


def winograd_gap(input: Tensor, weight: Tensor, stride: list[int], dilation: list[int], groups: int,
                 algorithm: str = "auto") -> str | None:
    """Why the Winograd kernels cannot compute this convolution with `algorithm` ('auto': any Winograd
    algorithm), or None when they can."""
    kernel = tuple(weight.shape[2:]) if weight.dim() == 4 else None
    five = kernel == (5, 5) and algorithm != "winograd4" and input.device.type in _WINOGRAD_5X5_DEVICES
    if kernel != (3, 3) and not five:
        return f"a 3x3 weight (5x5 with 'winograd2' on the CPU), but got shape {tuple(weight.shape)}"
    if stride != [1, 1] or dilation != [1, 1] or groups != 1:
        return f"stride 1, dilation 1 and groups 1, but got stride {stride}, dilation {dilation}, groups {groups}"
    if input.device.type not in _WINOGRAD_DEVICES:
        return f"a device with Winograd kernels ({', '.join(sorted(_WINOGRAD_DEVICES))}), but got {input.device.type}"
    return None


# Winograd wins once there are enough tiles to pay for the filter transform (alpha^2 x K x C values
# written per call) and to fill the products. Measured per layer against torch and the direct kernel
# (bench/NOTES.md, Winograd entry 8: every 3x3 stride-1 layer of VGG-16 and ResNet-50 at batch 1 and
# 8, AlexNet's 13x13 and GoogLeNet-like shapes, forward): F(4x4,3x3) from 32 4x4 tiles (28x28 maps at
# batch 1: 1.34-1.57x torch, F(2x2,3x3) 1.16-1.27x, direct 0.73-0.97x; 512x7x7 at batch 8: 1.30-1.45x)
# even with half a tile's outputs wasted on a 13x13 map (batch 8: 1.66-1.72x); F(2x2,3x3) from 49 2x2
# tiles (14x14 and 13x13 maps at batch 1: 1.04-1.22x, F(4x4,3x3) 0.82-1.02x, direct 0.66-0.96x); below
# that direct (7x7 maps at batch 1: direct 0.83-0.99x, F(2x2,3x3) 0.81-1.01x, F(4x4,3x3) 0.36-0.39x).
_MIN_WINOGRAD_CHANNELS = 32
_MIN_TILES = {"winograd4": 32, "winograd2": 49}
_WINOGRAD4_MOST_WASTE = 1.6  # computed / wanted outputs (13x13 maps: 1.51; 9x9: 1.78)


# On CUDA (H100, float32 against cuDNN with TF32 off, and bfloat16; bench/NOTES.md, Winograd convolution,
# CUDA, entry 1):
# the Winograd kernel this rule picks beat the direct kernel on every measured 3x3 layer, 64 to 512
# channels, maps of 14x14 to 56x56, batch 1 to 128 (forward 2.0-13.9x, forward+backward 1.17-6.9x over
# direct; against cuDNN up to 2.34x forward). F(4x4,3x3) leads from 196 4x4 tiles (56x56 at batch 1: 2.03x cuDNN,
# F(2x2,3x3) 1.61x; 14x14 at batch 32: 1.56x vs 1.19x), F(2x2,3x3) below (28x28 and 14x14 at batch 1:
# 1.91-1.92x, F(4x4,3x3) 0.97-1.50x). Maps under 14x14 take it from batch 8 (ResNet-50's 512x7x7, entry
# 4, bench/results/cuda/ab-rules.md: F(2x2,3x3) at batch 8 2.4x the direct kernel, 1.80x cuDNN forward,
# 1.32x forward+backward; F(4x4,3x3) at 128 3.3x direct, 2.79x / 2.01x cuDNN); below batch 8 they stay
# direct (not measured; the direct kernel's split reduction gives 2.36x cuDNN at batch 1), as do maps
# under 7x7 and fewer channels.
_CUDA_MIN_WINOGRAD_CHANNELS = 64
_CUDA_MIN_WINOGRAD_MAP = 7
_CUDA_SMALL_MAP = 14  # maps under this take Winograd from _CUDA_SMALL_MAP_MIN_BATCH
_CUDA_SMALL_MAP_MIN_BATCH = 8
_CUDA_MIN_WINOGRAD4_TILES = 196


def choose_algorithm(input: Tensor, weight: Tensor, stride: list[int], padding: list[int], dilation: list[int],
                     groups: int) -> str:
    """The heuristic behind algorithm='auto' (fastdl.backends.benchmark False), for 3x3 (and on the CPU
    5x5) stride-1 single-group convolutions; everything else is direct. 3x3 on the CPU, with at least 32
    input and output channels: Winograd F(4x4,3x3) when the batch has at least 32 4x4 output tiles and
    they compute at most 1.6 times the outputs wanted (the map's edge); else F(2x2,3x3) when it has at
    least 49 2x2 tiles; else direct. 3x3 on CUDA, with at least 64 channels and output maps of at least
    14x14: F(4x4,3x3) from 196 4x4 tiles, else F(2x2,3x3). 5x5 on the CPU: see winograd_5x5_rule."""
    if winograd_gap(input, weight, stride, dilation, groups):
        return "direct"
    return _heuristic(input, weight, padding)


def _heuristic(input: Tensor, weight: Tensor, padding: list[int]) -> str:
    """choose_algorithm for a convolution that the Winograd kernels can compute."""
    shape, kernel = input.shape, weight.shape[-1]
    batch = shape[0] if len(shape) == 4 else 1
    oh, ow = shape[-2] + 2 * padding[0] - kernel + 1, shape[-1] + 2 * padding[1] - kernel + 1
    if kernel == 5:
        return winograd_5x5_rule(input.device.type, batch, weight.shape[1], weight.shape[0], oh, ow)
    return winograd_rule(input.device.type, batch, min(weight.shape[0], weight.shape[1]), oh, ow)


def winograd_rule(device: str, batch: int, channels: int, oh: int, ow: int) -> str:
    """choose_algorithm's rule for a 3x3 stride-1 convolution that Winograd can compute: `channels` is
    the smaller of its input and output channel counts, oh x ow its output map."""
    tiles4 = batch * -(-oh // 4) * -(-ow // 4)
    if device == "cuda":
        if channels < _CUDA_MIN_WINOGRAD_CHANNELS or min(oh, ow) < _CUDA_MIN_WINOGRAD_MAP:
            return "direct"
        if min(oh, ow) < _CUDA_SMALL_MAP and batch < _CUDA_SMALL_MAP_MIN_BATCH:
            return "direct"
        return "winograd4" if tiles4 >= _CUDA_MIN_WINOGRAD4_TILES else "winograd2"
    if device != "cpu" or channels < _MIN_WINOGRAD_CHANNELS:
        return "direct"
    wasted = -(-oh // 4) * -(-ow // 4) * 16 / (oh * ow)
    if tiles4 >= _MIN_TILES["winograd4"] and wasted <= _WINOGRAD4_MOST_WASTE:
        return "winograd4"
    if batch * -(-oh // 2) * -(-ow // 2) >= _MIN_TILES["winograd2"]:
        return "winograd2"
    return "direct"


# F(2x2,5x5) on the CPU (bench/NOTES.md, Winograd 10): 36 products per 2x2 tile against 100 direct
# multiply-adds, but a tile's transforms cost 4 times F(4x4,3x3)'s per output, so it pays where each
# transformed value meets many products: C K / (C + K) (products per transformed value) of 40+, 64+
# channels each side, and 49+ tiles. Forward, two threads, F(2x2,5x5) time / direct time: AlexNet's 64
# -> 192 on 27x27 0.78-0.83x at batch 1, 0.68-0.77x at 8 and 32; 64 -> 128 on 28x28 0.78x; 128 -> 128
# on 14x14 at batch 1 (49 tiles) 0.89x, on 7x7 at batch 8 0.80x but at batch 1 (16 tiles) 1.47x; 96 -> 96
# on 13x13 at batch 1 1.01x; 64 -> 64 (C K / (C + K) = 32) 0.92-0.94x on 14x14 but 1.24x on 56x56;
# GoogLeNet's 5x5 branches (16-48 -> 32-128 channels) 1.09-2.0x.
_MIN_5X5_WINOGRAD_CHANNELS = 64
_MIN_5X5_PRODUCTS_PER_TRANSFORM = 40
_MIN_5X5_TILES = 49


def winograd_5x5_rule(device: str, batch: int, in_channels: int, out_channels: int, oh: int, ow: int) -> str:
    """choose_algorithm's rule for a 5x5 stride-1 convolution (oh x ow outputs): F(2x2,5x5) on the CPU
    with 64+ channels each side, C K / (C + K) >= 40 and 49+ 2x2 tiles; else direct."""
    if device != "cpu":
        return "direct"
    tiles = batch * -(-oh // 2) * -(-ow // 2)
    per_transform = in_channels * out_channels / (in_channels + out_channels)
    if (min(in_channels, out_channels) >= _MIN_5X5_WINOGRAD_CHANNELS and tiles >= _MIN_5X5_TILES
            and per_transform >= _MIN_5X5_PRODUCTS_PER_TRANSFORM):
        return "winograd2"
    return "direct"


def _auto(input, weight, bias, stride, padding, dilation, groups) -> str:
    if winograd_gap(input, weight, stride, dilation, groups):
        return "direct"
    if not backends.benchmark or torch.compiler.is_compiling():
        return _heuristic(input, weight, padding)
    key = (input.device, input.dtype, suggest_memory_format(input), tuple(input.shape), tuple(weight.shape),
           tuple(padding), bias is not None)
    if key not in backends.benchmarked:
        backends.benchmarked[key] = _fastest(input, weight, bias, padding)
    return backends.benchmarked[key]


def _fastest(input: Tensor, weight: Tensor, bias: Tensor | None, padding: list[int]) -> str:
    """The algorithm whose forward ran fastest on these tensors (best of 3 runs after a warm-up)."""
    def run(algorithm):
        if algorithm == "direct":
            return torch.ops.fastdl.conv2d(input, weight, bias, [1, 1], padding, [1, 1], 1)
        return torch.ops.fastdl.conv2d_winograd(input, weight, bias, padding, _WINOGRAD_TILES[algorithm])

    sync = torch.cuda.synchronize if input.device.type == "cuda" else (lambda: None)
    best, best_time = "direct", float("inf")
    candidates = ("direct", "winograd2") if weight.shape[-1] == 5 else ("direct", "winograd2", "winograd4")
    with torch.no_grad():
        for algorithm in candidates:
            run(algorithm)
            sync()
            for _ in range(3):
                start = time.perf_counter()
                run(algorithm)
                sync()
                if (elapsed := time.perf_counter() - start) < best_time:
                    best, best_time = algorithm, elapsed
    return best


# ---- fake kernels: output shapes and memory formats ------------------------------------------------


def _memory_format(input: Tensor, weight: Tensor) -> torch.memory_format:
    """The format the kernels write (common/conv2d_args.h): channels_last when the input or the weight is
    (batched input), except float64 on CUDA, which stays N,C,H,W as torch's does."""
    if input.device.type == "cuda" and input.dtype == torch.float64:
        return torch.contiguous_format
    if input.dim() == 4 and torch.channels_last in (suggest_memory_format(input), suggest_memory_format(weight)):
        return torch.channels_last
    return torch.contiguous_format


def _out_size(size, kernel, stride, pad, dilation):
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


@torch.library.register_fake("fastdl::conv2d")
def _conv2d_fake(input, weight, bias=None, stride=(1,), padding=(0,), dilation=(1,), groups=1):
    s, p, d = (int_pair(list(v), name, "conv2d")
               for v, name in ((stride, "stride"), (padding, "padding"), (dilation, "dilation")))
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


@torch.library.register_fake("fastdl::conv2d_winograd")
def _conv2d_winograd_fake(input, weight, bias, padding, tile):
    return _conv2d_fake(input, weight, bias, [1, 1], padding, [1, 1], 1)


@torch.library.register_fake("fastdl::conv2d_winograd_backward")
def _conv2d_winograd_backward_fake(grad_output, input, weight, padding, tile, output_mask):
    return _conv2d_backward_fake(grad_output, input, weight, [1, 1], padding, [1, 1], 1, output_mask)
