"""2-D convolution against PyTorch: output and all three gradients over a hypothesis search of
shapes and options and a grid of named cases (every path of the CPU kernels), the reference models'
convolution layers, gradcheck, opcheck, torch.compile, the layer and convert(), non-finite inputs and
bad input. CUDA cases carry the cuda marker (more in test_conv2d_cuda.py)."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdl
from conftest import tolerance

DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.float64]
LAYOUTS = ("contiguous", "channels_last", "strided")


def make(shape, layout, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    if layout == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        wide = torch.zeros((*shape[:-1], 2 * shape[-1]), dtype=dtype, device=device)
        wide[..., 1::2] = x
        return wide[..., 1::2]
    return x


def run(fn, x, w, b, grad):
    """fn's output and its gradients for x, w and b (None where not wanted) given grad."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    out = fn(*leaves)
    out.backward(grad)
    return out.detach(), [t.grad if t is not None else None for t in leaves]


def torch_conv2d(x, w, b, **args):
    """F.conv2d, with the bias added after the call when a dilation is above 1: torch 2.14.1's CPU
    convolution crashes the process (segmentation fault) on a channels_last weight with a bias and a
    dilation above 1, e.g. input (3, 5, 12, 1), weight (1, 5, 1, 2), stride (3, 2), padding (2, 3),
    dilation (1, 2), or input (3, 5, 15, 1), weight (1, 5, 5, 1), stride 2, padding 1, dilation
    (1, 2); without the bias it does not. The same function and output layout."""
    dilation = args.get("dilation", 1)
    if b is not None and any(d > 1 for d in ((dilation,) * 2 if isinstance(dilation, int) else dilation)):
        return F.conv2d(x, w, None, **args) + b.view(1, -1, 1, 1)
    return F.conv2d(x, w, b, **args)


def check_against_torch(x, w, b, stride, padding, dilation, groups, seed=0):
    """fastdl's output and gradients against torch's in float64, each element's error bounded by
    the table's rtol times the sum of |terms| it adds (computed from |x|, |w|, |grad|)."""
    dtype = x.dtype
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    ours = fastdl.ops.conv2d(x, w, b, **args, algorithm="direct")
    theirs = torch_conv2d(x, w, b, **args)
    assert ours.shape == theirs.shape and ours.dtype == dtype
    # The same layout: strides agree on every dimension longer than one (those of length one differ
    # between torch's convolution and torch.empty in channels_last, e.g. (2, 1, 1, 1) vs (2, 1, 2, 2)).
    assert [st for st, n in zip(ours.stride(), ours.shape) if n > 1] == \
        [st for st, n in zip(theirs.stride(), theirs.shape) if n > 1]
    grad = make(tuple(theirs.shape), "contiguous", dtype, x.device, seed + 1)
    out, grads = run(lambda x, w, b: fastdl.ops.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation,
                                                     groups=groups, algorithm="direct"), x, w, b, grad)
    d = lambda t: t.double() if t is not None else None  # noqa: E731
    ref, ref_grads = run(lambda x, w, b: torch_conv2d(x, w, b, **args), d(x), d(w), d(b), d(grad))
    bound, bound_grads = run(lambda x, w, b: torch_conv2d(x, w, b, **args), d(x).abs(), d(w).abs(),
                             d(b).abs() if b is not None else None, d(grad).abs())
    rtol, atol = tolerance("conv2d", dtype).values()
    for name, got, want, scale in [("output", out, ref, bound), *zip(("grad_input", "grad_weight", "grad_bias"),
                                                                      grads, ref_grads, bound_grads)]:
        if want is None:
            continue
        err = (got.double() - want).abs()
        assert torch.all(err <= rtol * scale + atol * 1e-6), (name, err.max().item(), scale.max().item())


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg, kg = draw(st.integers(1, 6)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 19))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 19))
    batch = draw(st.integers(1, 3))
    return dict(shape=(batch, cg * groups, h, w), weight=(kg * groups, cg, kh, kw), stride=(sh, sw),
                padding=(ph, pw), dilation=(dh, dw), groups=groups, layout=draw(st.sampled_from(LAYOUTS)),
                bias=draw(st.booleans()), weight_cl=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=150, deadline=None)
@given(case=conv_cases())
def test_conv2d_matches_torch(case, dtype, device):
    check_case(case, dtype, device)


def check_case(case, dtype, device):
    x = make(case["shape"], case["layout"], dtype, device, case["seed"])
    w = make(case["weight"], "channels_last" if case["weight_cl"] else "contiguous", dtype, device, case["seed"] + 2)
    b = make((case["weight"][0],), "contiguous", dtype, device, case["seed"] + 3) if case["bias"] else None
    check_against_torch(x, w, b, case["stride"], case["padding"], case["dilation"], case["groups"], case["seed"])


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(case=conv_cases())
def test_conv2d_over_im2col_columns_matches_torch(case, dtype):
    """The CPU forward and input gradient as 1x1 convolutions over im2col columns (forward_columns and
    grad_input_columns in csrc/cpu/conv2d.cpp), which the rule takes for small maps and strided kernels
    over 64+ channels only, forced on every kernel larger than 1x1 of the search."""
    os.environ["FASTDL_CONV_COLUMNS"] = "always"
    try:
        check_case(case, dtype, "cpu")
    finally:
        del os.environ["FASTDL_CONV_COLUMNS"]


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(case=conv_cases())
def test_conv2d_channels_last_channel_vectors_match_torch(case, dtype):
    """The CPU forward, input gradient and 1x1 weight gradient of channels-last convolutions with vectors
    along the output channels (csrc/cpu/conv2d_channels_last.h), which the rule takes where a vector
    fills, forced on every channels-last case of the search (down to one output channel)."""
    case = dict(case, layout="channels_last")
    os.environ["FASTDL_CONV_CHANNEL_VECTORS"] = "always"
    try:
        check_case(case, dtype, "cpu")
    finally:
        del os.environ["FASTDL_CONV_CHANNEL_VECTORS"]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape, wshape, stride, padding, dilation, groups", [
    ((2, 40, 9, 11), (36, 40, 3, 3), 1, 1, 1, 1),  # 36 = 2 blocks of 16 + 4 (float), 4 blocks of 8 + 4 (double)
    ((4, 24, 13, 12), (40, 24, 3, 3), 2, 1, 1, 1),  # stride 2: four phases of the input gradient
    ((3, 64, 7, 7), (64, 32, 3, 3), 1, 2, 2, 2),    # groups, dilation, padding past the kernel's reach
    ((9, 32, 24, 20), (48, 32, 1, 1), 2, 0, 1, 1),  # strided 1x1: phases no tap reaches
    ((5, 20, 9, 9), (36, 20, 1, 1), 1, 1, 1, 1),    # padded 1x1: output pixels that read padding only
    ((2, 8, 256, 256), (32, 8, 1, 1), 1, 0, 1, 1),  # a 16 MB output: non-temporal stores
    ((1, 3, 23, 21), (32, 3, 7, 7), 2, 3, 1, 1),    # a 7x7 stem (its input gradient: 3 channels, rows)
])
def test_channels_last_channel_vectors_by_rule(shape, wshape, stride, padding, dilation, groups, threads):
    """Channels-last layers that the rule gives the channel-vector kernels (enough channels, and 128+
    output pixels for the forward, input pixels for the input gradient, 512+ output pixels for the 1x1
    weight gradient),
    the tiles spread over 1-3 threads (the weight gradient's rows split between them)."""
    check_with_threads(threads, shape, wshape, stride, padding, dilation, groups, "channels_last", bias=True)


# Named cases: (input shape, weight shape, stride, padding, dilation, groups), one per kernel path.
NAMED = {
    "3x3 same": ((2, 16, 12, 12), (24, 16, 3, 3), 1, 1, 1, 1),
    "1x1 planes read directly": ((2, 40, 9, 9), (36, 40, 1, 1), 1, 0, 1, 1),
    "1x1 plane smaller than a vector": ((3, 8, 2, 2), (5, 8, 1, 1), 1, 0, 1, 1),
    "1x1 stride 2 (ResNet downsample)": ((2, 16, 14, 14), (32, 16, 1, 1), 2, 0, 1, 1),
    "7x7 stride 2 pad 3 (ResNet conv1)": ((2, 3, 37, 41), (16, 3, 7, 7), 2, 3, 1, 1),
    "11x11 stride 4 pad 2 (AlexNet conv1)": ((2, 3, 63, 63), (8, 3, 11, 11), 4, 2, 1, 1),
    "5x5 pad 2 (AlexNet conv2)": ((1, 12, 13, 13), (20, 12, 5, 5), 1, 2, 1, 1),
    "1x7 and 7x1 (Inception)": ((2, 6, 17, 17), (10, 6, 1, 7), 1, (0, 3), 1, 1),
    "7x1": ((2, 6, 17, 17), (10, 6, 7, 1), 1, (3, 0), 1, 1),
    "3x2 asymmetric, stride (2, 3)": ((2, 5, 16, 19), (7, 5, 3, 2), (2, 3), (1, 0), 1, 1),
    "dilation 2 stride 2": ((2, 4, 23, 21), (6, 4, 3, 3), 2, 2, 2, 1),
    "padding beyond half the kernel": ((2, 4, 6, 7), (5, 4, 3, 3), 1, 4, 1, 1),
    "output channels not a multiple of 4": ((2, 8, 10, 10), (7, 8, 3, 3), 1, 1, 1, 1),
    "groups 2": ((2, 8, 10, 10), (12, 4, 3, 3), 1, 1, 1, 2),
    "groups 4, 3 outputs per group": ((2, 8, 10, 10), (12, 2, 3, 3), 1, 1, 1, 4),
    "depthwise": ((2, 12, 11, 11), (12, 1, 3, 3), 1, 1, 1, 12),
    "depthwise x2 stride 2": ((2, 6, 11, 11), (12, 1, 5, 5), 2, 2, 1, 6),
    "many channels (several channel blocks)": ((2, 300, 7, 7), (20, 300, 3, 3), 1, 1, 1, 1),
    "many output channels, batch 1": ((1, 32, 5, 5), (260, 32, 3, 3), 1, 1, 1, 1),
    "wide rows (several tiles per row)": ((1, 4, 5, 100), (8, 4, 3, 3), 1, 1, 1, 1),
    "kernel as large as the input": ((2, 3, 5, 5), (4, 3, 5, 5), 1, 0, 1, 1),
    "one output pixel": ((2, 6, 1, 1), (4, 6, 1, 1), 1, 0, 1, 1),
    "stride larger than kernel": ((2, 3, 13, 13), (4, 3, 2, 2), 3, 0, 1, 1),
    "large stride, only some inputs reached": ((2, 3, 10, 10), (4, 3, 1, 1), 4, 1, 1, 1),
    # A padded pixel followed by a run of one input row: the run is not one copy (CI failure of stop 9).
    "1x1 padded, rows longer than a tile": ((1, 2, 1, 40), (3, 2, 1, 1), 1, (0, 1), 1, 1),
    "1x1 padded on all sides": ((2, 3, 5, 37), (4, 3, 1, 1), 1, 1, 1, 1),
    # The weight gradient's channel-vector form (rows under 16 vectors, 2 vectors of outputs per group):
    "groups 2, outputs per group past one channel block": ((2, 16, 9, 9), (56, 8, 3, 3), 1, 1, 1, 2),
    "stride 2, dilation 2, many outputs": ((2, 6, 15, 15), (40, 6, 3, 3), 2, 2, 2, 1),
    # A strided input gradient's phases write every other pixel: one pass over all 100 output channels
    # (contiguous rows run several passes, 28-85 channels each).
    "stride 2, input gradient over 100 output channels": ((2, 5, 12, 11), (100, 5, 3, 3), 2, 1, 1, 1),
    "rows of 140 pixels, many outputs (pixel-vector form)": ((1, 3, 6, 140), (16, 3, 3, 3), 1, 1, 1, 1),
    # Small maps go through im2col columns, with only the taps that reach the image (forward and
    # input gradient): 1x1 maps (one tap), 2x2 and 4x4 maps, grouped, strided, dilated; and no tap at all.
    "3x3 on 1x1 maps: one tap reaches the image": ((3, 16, 1, 1), (24, 16, 3, 3), 1, 1, 1, 1),
    "small maps, 2x2 out, stride 2": ((2, 6, 3, 3), (8, 6, 3, 3), 2, 1, 1, 1),
    "small maps, 4x4 out, groups 2, stride 2": ((3, 8, 7, 7), (12, 4, 3, 3), 2, 1, 1, 2),
    "small maps, dilation 2 past the image": ((2, 4, 3, 3), (6, 4, 3, 3), 1, 2, 2, 1),
    "no tap reaches the image: the bias alone": ((2, 3, 1, 1), (4, 3, 2, 2), 3, 2, 1, 1),
    # Strided kernels over 64+ input channels per group also take im2col columns, gathered tile by tile
    # (the output pixels of the batch in flat order: vectors run from one image into the next).
    "strided columns, 3x3 stride 2": ((2, 64, 17, 15), (9, 64, 3, 3), 2, 1, 1, 1),
    "strided columns, 7x7 outputs, batch 3 (vectors across images)": ((3, 64, 14, 14), (5, 64, 3, 3), 2, 1, 1, 1),
    "strided columns, groups 2, 5x5 stride (2, 3)": ((1, 128, 20, 31), (6, 64, 5, 5), (2, 3), 2, 1, 2),
    "strided columns, dilation 3": ((1, 64, 13, 11), (6, 64, 3, 3), 2, 3, 3, 1),
    # A weight gradient whose input outweighs its weights splits the images between the threads, each
    # summing into its own copy (items of one image here, at two threads).
    "weight gradient, images split between threads": ((4, 8, 12, 12), (8, 8, 3, 3), 2, 1, 1, 1),
    # The strided input gradient per phase as a 1x1 convolution over grad_output's im2col columns,
    # written dense and then put in place (the rule takes it with 64+ channels per group on both
    # sides; these small cases run it when test_named_cases_over_columns_or_rows forces it).
    "strided input-gradient columns, 3x3 stride 2": ((2, 5, 17, 15), (64, 5, 3, 3), 2, 1, 1, 1),
    "strided input-gradient columns, 7x7 phases, batch 3 (vectors across images)": ((3, 4, 14, 14), (64, 4, 3, 3), 2, 1, 1, 1),
    "strided input-gradient columns, groups 2, 5x5 stride (2, 3)": ((1, 6, 20, 31), (128, 3, 5, 5), (2, 3), 2, 1, 2),
    "strided input-gradient columns, dilation 3": ((1, 3, 13, 11), (64, 3, 3, 3), 2, 3, 3, 1),
    "strided input-gradient columns, a phase no tap reaches": ((1, 3, 11, 10), (64, 3, 2, 2), 3, 0, 1, 1),
    # 1x1 tiles take the batch's pixels in flat order, a vector's lanes stored into as many images as
    # it spans; the input gradient of an unpadded 1x1 convolution is a 1x1 convolution of grad_output
    # (spread with zeros for stride > 1).
    "1x1 on 7x7 maps, batch 3 (vectors across images)": ((3, 20, 7, 7), (12, 20, 1, 1), 1, 0, 1, 1),
    "1x1 on 3x3 maps, batch 5 (a vector across three images)": ((5, 6, 3, 3), (9, 6, 1, 1), 1, 0, 1, 1),
    "1x1 on 14x14 maps, batch 2 (half a vector in each image)": ((2, 9, 14, 14), (5, 9, 1, 1), 1, 0, 1, 1),
    # The 1x1 weight gradient with vectors along the input channels up to 14x14 maps, its dense input
    # gathered pixel-major by 8x8 transposes (a channel group and the last pixels of a plane left over).
    "1x1 on 14x14 maps, batch 3 (weight gradient over channel vectors)": ((3, 20, 14, 14), (12, 20, 1, 1), 1, 0, 1, 1),
    "1x1 stride 2 padded, groups 2, small maps": ((3, 8, 9, 9), (6, 4, 1, 1), 2, 1, 1, 2),
    "1x1 stride 2 unpadded, odd sizes": ((2, 8, 9, 11), (12, 8, 1, 1), 2, 0, 1, 1),
    "1x1 stride 3 unpadded, groups 2, batch 1": ((1, 12, 10, 10), (40, 6, 1, 1), 3, 0, 1, 2),
    "1x1, input channels not a multiple of 4": ((2, 7, 6, 6), (9, 7, 1, 1), 1, 0, 1, 1),
    # The weight gradient of 1x1 kernels on small maps: vectors along the input channels.
    "1x1 padded, stride 2, small maps (weight gradient over channels)": ((2, 5, 6, 6), (7, 5, 1, 1), 2, 1, 1, 1),
    "1x1 stride (2, 3) padded (1, 0), small maps (gathered pixel-major)": ((2, 5, 9, 11), (7, 5, 1, 1), (2, 3), (1, 0), 1, 1),
    "1x1 on 14x14 maps, many channels": ((1, 70, 14, 14), (30, 70, 1, 1), 1, 0, 1, 1),
    # Units of 4 tiles (conv2d_blocks.h kStoreRunTiles: reductions of 65-256 channels, 8+ units per
    # thread): forward over 120 channels, input gradient over 100; 55x55 maps put vectors across images,
    # and 631 tiles end in a unit of 3.
    "1x1 in units of 4 tiles (the forward and the input gradient)": ((5, 120, 55, 55), (100, 120, 1, 1), 1, 0, 1, 1),
    # 1x1 reductions longer than one pass over tile-major inputs (1365 channels or pixels): the forward
    # over input channels, the input gradient over output channels, the weight gradient over pixels.
    "1x1 reductions past one pass (channels)": ((1, 1380, 2, 3), (1370, 1380, 1, 1), 1, 0, 1, 1),
    "1x1 past one pass, vectors across images (partial sums read back)": ((3, 1380, 3, 5), (9, 1380, 1, 1), 1, 0, 1, 1),
    "1x1 weight gradient past one pass (pixels)": ((22, 3, 8, 8), (5, 3, 1, 1), 1, 0, 1, 1),
    # Batch 1 with rows in two groups of unequal work, spread over the threads by cost.
    "rows in two groups, batch 1": ((1, 64, 40, 40), (8, 64, 3, 3), 1, 1, 1, 1),
    # Few pixel items: the weight gradient's input packed once for all threads (SHARED_ITEMS), in both
    # forms (24 output channels: vectors along them; 5: rows of pixels), grouped, 5x5.
    "3x3 stride 2, batch 1 (weight gradient items packed once)": ((1, 20, 14, 14), (24, 20, 3, 3), 2, 1, 1, 1),
    "3x3 stride 2, batch 2, rows (weight gradient items packed once)": ((2, 20, 15, 15), (5, 20, 3, 3), 2, 1, 1, 1),
    "3x3, 3 groups, batch 2 (weight gradient items packed once)": ((2, 12, 10, 10), (48, 4, 3, 3), 1, 1, 1, 3),
    "5x5, batch 3 (weight gradient items packed once)": ((3, 8, 12, 12), (16, 8, 5, 5), 1, 2, 1, 1),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("name", list(NAMED))
def test_named_cases(name, layout, dtype, device):
    shape, wshape, stride, padding, dilation, groups = NAMED[name]
    x = make(shape, layout, dtype, device, 1)
    w = make(wshape, "contiguous", dtype, device, 2)
    b = make((wshape[0],), "contiguous", dtype, device, 3)
    check_against_torch(x, w, b, stride, padding, dilation, groups)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("kernel,dilation", [((3, 3), 1), ((4, 2), 1), ((2, 5), (2, 1)), ((1, 1), 1)])
def test_padding_strings(padding, kernel, dilation, device):
    x = make((2, 3, 9, 10), "contiguous", torch.float64, device, 0)
    w = make((4, 3, *kernel), "contiguous", torch.float64, device, 1)
    check_against_torch(x, w, None, 1, padding, dilation, 1)


@pytest.mark.parametrize("device", DEVICES)
def test_unbatched_input(device):
    x = make((3, 9, 8), "contiguous", torch.float64, device, 0)
    w = make((5, 3, 3, 3), "contiguous", torch.float64, device, 1)
    check_against_torch(x, w, make((5,), "contiguous", torch.float64, device, 2), 2, 1, 1, 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", [(True, False, False), (False, True, False), (False, False, True),
                                  (False, True, True), (True, True, False)])
def test_backward_computes_only_what_is_asked(mask, device):
    x = make((2, 4, 7, 7), "contiguous", torch.float64, device, 0)
    w = make((6, 4, 3, 3), "contiguous", torch.float64, device, 1)
    g = make((2, 6, 7, 7), "contiguous", torch.float64, device, 2)
    got = torch.ops.fastdl.conv2d_backward(g, x, w, [1], [1], [1], 1, list(mask))
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, torch.zeros(6, dtype=x.dtype, device=device)))
    F.conv2d(xr, wr, br, padding=1).backward(g)
    for wanted, ours, ref in zip(mask, got, (xr.grad, wr.grad, br.grad)):
        if wanted:
            torch.testing.assert_close(ours, ref, **tolerance("conv2d", torch.float64))
        else:
            assert ours.numel() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x = torch.randn(0, 4, 7, 7, device=device, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, device=device, requires_grad=True)
    b = torch.randn(6, device=device, requires_grad=True)
    out = fastdl.ops.conv2d(x, w, b, padding=1)
    assert out.shape == (0, 6, 7, 7)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("out_channels", [4, 20])  # the weight gradient's pixel- and channel-vector forms
def test_non_finite_inputs_spread_as_in_torch(out_channels, device):
    x = make((2, 3, 9, 10), "contiguous", torch.float32, device, 0)
    x[0, 1, 4, 9] = float("inf")  # last column: next to a row boundary of the packed buffers
    x[1, 0, 2, 3] = float("nan")
    w = make((out_channels, 3, 3, 3), "contiguous", torch.float32, device, 1)
    g = make((2, out_channels, 9, 10), "contiguous", torch.float32, device, 2)
    ours = fastdl.ops.conv2d(x, w, None, padding=1)
    theirs = F.conv2d(x, w, None, padding=1)
    assert torch.equal(ours.isnan(), theirs.isnan()) and torch.equal(ours.isinf(), theirs.isinf())
    gi, gw, _ = torch.ops.fastdl.conv2d_backward(g, x, w, [1], [1], [1], 1, [True, True, False])
    _, ref_gw, _ = torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                       [False, True, False])
    assert torch.equal(gw.isfinite(), ref_gw.isfinite())
    assert gi.isfinite().all()


@pytest.mark.parametrize("name", list(NAMED))
def test_named_cases_with_weights_in_place_or_packed(name, monkeypatch):
    """The CPU tiles read the weights in place where each meets few pixel vectors (most of these
    cases), else packed (csrc/cpu/conv2d.cpp, weights_in_place): both forms on every named case, each
    against torch, and the same sums in the same order, so bitwise equal to each other."""
    shape, wshape, stride, padding, dilation, groups = NAMED[name]
    for dtype in (torch.float32, torch.float64):
        x = make(shape, "contiguous", dtype, "cpu", 1)
        w = make(wshape, "contiguous", dtype, "cpu", 2)
        b = make((wshape[0],), "contiguous", dtype, "cpu", 3)
        grad = make(tuple(F.conv2d(x, w, None, stride, padding, dilation, groups).shape), "contiguous", dtype, "cpu", 4)
        results = []
        for weights in ("always", "never"):
            monkeypatch.setenv("FASTDL_CONV_WEIGHTS_IN_PLACE", weights)
            check_against_torch(x, w, b, stride, padding, dilation, groups)
            results.append(run(lambda x, w, b: fastdl.ops.conv2d(x, w, b, stride, padding, dilation, groups,
                                                                 algorithm="direct"), x, w, b, grad))
        (out_a, grads_a), (out_b, grads_b) = results
        assert torch.equal(out_a, out_b) and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


@pytest.mark.parametrize("name", [name for name, case in NAMED.items() if case[1][2] * case[1][3] > 1])
def test_named_cases_over_columns_or_rows(name, monkeypatch):
    """Kernels larger than 1x1 run their forward and input gradient either over packed rows or as 1x1
    convolutions over im2col columns (csrc/cpu/conv2d.cpp, columns_forward and columns_grad_input):
    both forms, forced with FASTDL_CONV_COLUMNS, on every such named case against torch."""
    shape, wshape, stride, padding, dilation, groups = NAMED[name]
    for dtype in (torch.float32, torch.float64):
        x = make(shape, "contiguous", dtype, "cpu", 1)
        w = make(wshape, "contiguous", dtype, "cpu", 2)
        b = make((wshape[0],), "contiguous", dtype, "cpu", 3)
        for columns in ("always", "never"):
            monkeypatch.setenv("FASTDL_CONV_COLUMNS", columns)
            check_against_torch(x, w, b, stride, padding, dilation, groups)


@pytest.mark.parametrize("kernel, padding", [(1, 0), (3, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stride_2_inputs_gathered_as_runs(kernel, padding, dtype, monkeypatch):
    """Stride-2 convolutions gather a tile's inputs as runs of every other element (copy_run in
    csrc/cpu/conv2d_packing.h: whole vectors deinterleaved, the rest lane by lane): widths 1-35
    give runs of every length against the vector width, ending at the input's last column (odd
    widths) and last element; 3x3 over im2col columns, 1x1 forward and weight gradient over pixels."""
    monkeypatch.setenv("FASTDL_CONV_COLUMNS", "always")
    for width in range(1, 36):
        x = make((3, 3, 29, width), "contiguous", dtype, "cpu", width)
        w = make((4, 3, kernel, kernel), "contiguous", dtype, "cpu", 100 + width)
        check_against_torch(x, w, None, 2, padding, 1, 1)


def check_with_threads(threads, shape, wshape, stride, padding, dilation, groups, layout="contiguous", bias=False):
    """check_against_torch in float32 and float64 with torch's thread count set to `threads`."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for dtype in (torch.float32, torch.float64):
            x = make(shape, layout, dtype, "cpu", 1)
            w = make(wshape, "contiguous", dtype, "cpu", 2)
            b = make((wshape[0],), "contiguous", dtype, "cpu", 3) if bias else None
            check_against_torch(x, w, b, stride, padding, dilation, groups)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, wshape, stride, groups", [
    ((1, 2048, 7, 7), (512, 2048, 1, 1), 1, 1),   # ResNet-50 layer4.1.conv1's input gradient
    ((1, 29, 5, 5), (6, 29, 1, 1), 2, 1),          # 29 channels: the last block of 4 part-filled
    ((2, 30, 3, 3), (9, 30, 1, 1), 1, 1),
    ((1, 78, 4, 4), (9, 26, 1, 1), 1, 3),          # groups: blocks numbered across groups, 26 = 6 x 4 + 2
])
def test_pointwise_input_gradient_with_items_own_weights(shape, wshape, stride, groups, threads):
    """1x1 input gradients whose weights outweigh the batch's grad_output (pointwise_tiles' one unit:
    here more than 24 input channels per group and tile): each item packs the transposed weights of
    its own output-channel blocks (pack_pointwise_input_grad_blocks in csrc/cpu/conv2d_packing.h)."""
    check_with_threads(threads, shape, wshape, stride, 0, 1, groups)


# Named cases whose weight gradient has fewer pixel items than twice the threads: the threads split
# the output-channel blocks, and every item is packed once beforehand with its channels split between
# the threads (SharedGradItems in csrc/cpu/conv2d_grad_weight.h); one thread packs per task.
SHARED_ITEMS = [name for name in NAMED if name.endswith("(weight gradient items packed once)")]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("name", SHARED_ITEMS)
def test_weight_gradient_items_shared_between_threads(name, threads):
    check_with_threads(threads, *NAMED[name])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", [((2, 3, 6, 7), (4, 3, 3, 3), 1, 1, 1, 1), ((2, 4, 7, 6), (6, 2, 2, 3), 2, 1, 2, 2),
                                    ((1, 3, 5, 5), (3, 1, 3, 3), 1, 0, 1, 3), ((5, 3, 4), (2, 5, 1, 1), 1, 0, 1, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck(config, channels_last, device):
    shape, wshape, stride, padding, dilation, groups = config
    layout = "channels_last" if channels_last else "contiguous"
    x = make(shape, layout, torch.float64, device, 0).requires_grad_()
    w = make(wshape, "contiguous", torch.float64, device, 1).requires_grad_()
    b = make((wshape[0],), "contiguous", torch.float64, device, 2).requires_grad_()
    fn = lambda x, w, b: fastdl.ops.conv2d(x, w, b, stride, padding, dilation, groups)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_fake_kernels_give_the_kernels_layout():
    # torch.compile traces with the fake kernels: their layout must be the kernels' (common/conv2d_args.h):
    # channels_last in, channels_last out, except float64 on CUDA (N,C,H,W, as torch). Fake CUDA tensors
    # need no GPU.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        for device, dtype, expected in [("cuda", torch.float64, torch.contiguous_format),
                                        ("cuda", torch.float32, torch.channels_last),
                                        ("cpu", torch.float64, torch.channels_last)]:
            x = torch.empty(2, 3, 8, 8, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
            w = torch.empty(4, 3, 3, 3, device=device, dtype=dtype)
            y = torch.ops.fastdl.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1)
            gx = torch.ops.fastdl.conv2d_backward(torch.empty_like(y), x, w, [1, 1], [1, 1], [1, 1], 1,
                                                  [True, False, False])[0]
            assert y.is_contiguous(memory_format=expected) and gx.is_contiguous(memory_format=expected), (device, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    fd = torch.ops.fastdl
    for shape, wshape, stride, padding, groups, layout in [((2, 4, 7, 7), (6, 4, 3, 3), [1], [1], 1, "contiguous"),
                                                          ((2, 4, 8, 7), (6, 2, 3, 1), [2, 1], [1, 0], 2, "channels_last"),
                                                          ((4, 6, 5), (4, 4, 1, 1), [1], [0], 1, "contiguous")]:
        x = make(shape, layout, torch.float32, device, 0)
        w = make(wshape, "contiguous", torch.float32, device, 1)
        b = make((wshape[0],), "contiguous", torch.float32, device, 2)
        for bias in (b, None):
            args = (x.clone().requires_grad_(), w.clone().requires_grad_(),
                    bias.clone().requires_grad_() if bias is not None else None, stride, padding, [1], groups)
            torch.library.opcheck(fd.conv2d.default, args)
        out = fd.conv2d(x, w, b, stride, padding, [1], groups)
        for mask in ([True, True, True], [True, False, False], [False, True, True]):
            torch.library.opcheck(fd.conv2d_backward.default,
                                  (torch.randn_like(out), x, w, stride, padding, [1], groups, mask))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_training_step_matches_eager(device):
    torch.manual_seed(0)
    eager = torch.nn.Sequential(fastdl.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                fastdl.nn.Conv2d(8, 4, 3, stride=2, groups=2, bias=False)).to(device)
    compiled_model = torch.nn.Sequential(fastdl.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                         fastdl.nn.Conv2d(8, 4, 3, stride=2, groups=2, bias=False)).to(device)
    compiled_model.load_state_dict(eager.state_dict())
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=True)
    x = torch.randn(4, 3, 12, 12, device=device)
    out_e, out_c = eager(x), compiled(x)
    torch.testing.assert_close(out_c, out_e)
    out_e.square().sum().backward()
    out_c.square().sum().backward()
    for pe, pc in zip(eager.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(pc.grad, pe.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [1, (2, 1), "same", "valid"])
def test_layer_matches_torch_layer(padding_mode, padding, device):
    if padding == "valid" and padding_mode != "zeros":
        padding = 1
    kwargs = dict(stride=1, padding=padding, padding_mode=padding_mode, dilation=(1, 2))
    torch.manual_seed(0)
    stock = torch.nn.Conv2d(4, 6, (3, 4), **kwargs).to(device).double()
    ours = fastdl.nn.Conv2d(4, 6, (3, 4), **kwargs).to(device).double()
    ours.load_state_dict(stock.state_dict())
    assert repr(ours).replace("fastdl.nn.", "") == repr(stock)
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64, device=device)
    xs, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    ys, yo = stock(xs), ours(xo)
    torch.testing.assert_close(yo, ys, **tolerance("conv2d", torch.float64))
    ys.sum().backward()
    yo.sum().backward()
    torch.testing.assert_close(xo.grad, xs.grad, **tolerance("conv2d", torch.float64))
    torch.testing.assert_close(ours.weight.grad, stock.weight.grad, **tolerance("conv2d", torch.float64))


def test_layer_algorithm():
    layer = fastdl.nn.Conv2d(3, 4, 3, algorithm="direct")
    assert layer.algorithm == "direct" and fastdl.nn.Conv2d(3, 4, 3).algorithm == "auto"
    with pytest.raises(ValueError, match="algorithm must be one of"):
        fastdl.nn.Conv2d(3, 4, 3, algorithm="fft")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        fastdl.ops.conv2d(torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 3), algorithm="fft")


def test_convert_maps_conv_layers_and_keeps_parameters():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    weight = model[0].weight
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    fastdl.convert(model)
    assert type(model[0]) is fastdl.nn.Conv2d and model[0].weight is weight and model[0].algorithm == "auto"
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    fastdl.revert(model)
    assert type(model[0]) is torch.nn.Conv2d


def lenet5_convs() -> torch.nn.Module:
    """LeNet-5's convolutions (32x32 input, C1 6@5x5, pooling, C3 16@5x5)."""
    return torch.nn.Sequential(torch.nn.Conv2d(1, 6, 5), torch.nn.Tanh(), torch.nn.AvgPool2d(2),
                               torch.nn.Conv2d(6, 16, 5))


def reference_model(name: str):
    import torchvision

    if name == "lenet5":
        return lenet5_convs(), (2, 1, 32, 32)
    return getattr(torchvision.models, name)(weights=None), (2, 3, 224, 224)


@pytest.mark.parametrize("name", ["lenet5", "alexnet", "vgg16", "resnet18"])
def test_reference_model_conv_layers_match(name):
    """Every convolution of the model, on the input it sees at batch 2, forward and backward."""
    torch.manual_seed(0)
    model, shape = reference_model(name)
    inputs = {}

    def record(module, args, out):
        inputs[module] = args[0].detach()

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.randn(shape))
    for h in hooks:
        h.remove()
    assert inputs
    for conv, x in inputs.items():
        bias = conv.bias.detach() if conv.bias is not None else None
        x = x[:, :, : min(x.shape[2], 64), : min(x.shape[3], 64)] if name == "vgg16" else x  # VGG: 64x64 crops
        check_against_torch(x, conv.weight.detach(), bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def test_bad_input_names_the_argument():
    x, w = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3)
    op = fastdl.ops.conv2d
    with pytest.raises(RuntimeError, match=r"expected input of shape \[2, 4, 8, 8\] to have 6 channels"):
        op(x, torch.randn(6, 6, 3, 3))
    with pytest.raises(RuntimeError, match="out_channels .* divisible by groups"):
        op(x, torch.randn(6, 2, 3, 3), groups=4)
    with pytest.raises(RuntimeError, match="to have 8 channels, but got 4"):
        op(x, torch.randn(8, 4, 3, 3), groups=2)
    with pytest.raises(RuntimeError, match="smaller than the dilated kernel"):
        op(torch.randn(2, 4, 2, 2), w)
    with pytest.raises(RuntimeError, match="smaller than the dilated kernel"):
        op(torch.randn(2, 4, 5, 5), w, dilation=3)
    with pytest.raises(RuntimeError, match="expected padding to be non-negative"):
        op(x, w, padding=-1)
    with pytest.raises(RuntimeError, match="expected stride to be positive"):
        op(x, w, stride=0)
    with pytest.raises(RuntimeError, match="expected dilation to be positive"):
        op(x, w, dilation=(1, 0))
    with pytest.raises(RuntimeError, match="expected groups to be positive"):
        op(x, w, groups=0)
    with pytest.raises(RuntimeError, match=r"expected input to be 3-D \(C,H,W\) or 4-D"):
        op(torch.randn(4, 8), w)
    with pytest.raises(RuntimeError, match=r"expected input to be 3-D \(C,H,W\) or 4-D"):
        op(torch.randn(1, 2, 4, 8, 8), w)
    with pytest.raises(RuntimeError, match="expected weight to be 4-D"):
        op(x, torch.randn(6, 4, 3))
    with pytest.raises(RuntimeError, match="expected input to be float32 or float64"):
        op(x.long(), w.long())
    with pytest.raises(RuntimeError, match="expected weight to have the dtype of input"):
        op(x, w.double())
    with pytest.raises(RuntimeError, match="expected bias to be 1-D with 6 elements"):
        op(x, w, torch.randn(5))
    with pytest.raises(RuntimeError, match="expected weight with no zero dimension"):
        op(x, torch.randn(0, 4, 3, 3))
    with pytest.raises(RuntimeError, match=r"expected grad_output of shape \[2, 6, 6, 6\]"):
        torch.ops.fastdl.conv2d_backward(torch.randn(2, 6, 5, 5), x, w, [1], [0], [1], 1, [True, True, True])
    with pytest.raises(ValueError, match="padding='same' is not supported for strided convolutions"):
        op(x, w, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding must be a number, a pair, 'valid' or 'same'"):
        op(x, w, padding="full")
    with pytest.raises(ValueError, match="stride must be an int or a pair of ints"):
        op(x, w, stride=(1, 2, 3))
    with pytest.raises(ValueError, match=r"fastdl.conv2d: stride must be an int or a pair of ints, but got 1.5"):
        op(x, w, stride=1.5)
    with pytest.raises(ValueError, match="dilation must be an int or a pair of ints"):
        op(x, w, dilation=(True, 1))
    with pytest.raises(ValueError, match="groups must be an int"):
        op(x, w, groups=True)
    # numpy's integers are ints to torch too.
    torch.testing.assert_close(op(x, w, stride=np.int64(2), groups=np.int64(1)), F.conv2d(x, w, stride=2))


@pytest.mark.cuda
def test_weight_on_another_device():
    x, w = torch.randn(2, 4, 8, 8, device="cuda"), torch.randn(6, 4, 3, 3)
    with pytest.raises(RuntimeError, match="expected weight on the same device as input"):
        fastdl.ops.conv2d(x, w)
