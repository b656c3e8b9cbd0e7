"""The CUDA Winograd kernels' host emulation (csrc/cuda/winograd_kernels.h) against
torch.nn.functional.conv2d and its input gradient on the CPU: the filter, input and output transforms
and the batched GEMM tile logic, run on the host. `conv2d_winograd` uses chunks of a few tiles (chunk
boundaries inside images and tile rows); `conv2d_winograd_int64` uses 64-bit indices and the device's
chunk plan (whole GEMM column tiles). The forward tests run the staged kernels and the fused one
(winograd_fused.cu: blocks of tiles and outputs, slices of channels; the winograd_kernel fixture).
tests/test_winograd_cuda.py runs the kernels themselves."""

import random

import pytest
import torch
import torch.nn.functional as F

import fastdl
from conftest import WINOGRAD_FLOAT32_REL_L2, tolerance

pytestmark = pytest.mark.skipif(not fastdl.cuda_enabled(), reason="CUDA kernels not built")

GRAD_INPUT_ONLY = [True, False, False]


# (N, C, H, W, K, (pad_h, pad_w)): sizes from 1x1 up, not multiples of either tile, every padding
# 0-3 (3 gives grad_input a negative padding), different padding per axis.
CASES = [
    (1, 1, 1, 1, 1, (1, 1)),
    (2, 3, 1, 5, 4, (1, 2)),
    (3, 5, 13, 17, 7, (1, 1)),
    (1, 20, 8, 8, 20, (0, 0)),
    (2, 7, 9, 6, 3, (2, 2)),
    (1, 4, 5, 11, 9, (3, 3)),
    (2, 2, 3, 3, 5, (0, 3)),
    (1, 16, 12, 12, 2, (1, 0)),
    (3, 1, 7, 10, 11, (3, 1)),
    (2, 9, 2, 13, 6, (2, 0)),
]


def case_id(case):
    n, c, h, w, k, (ph, pw) = case
    return f"{n}x{c}x{h}x{w}-k{k}-p{ph}{pw}"


def make_inputs(case, dtype, bias, memory_format, seed=0):
    n, c, h, w, k, padding = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64).to(dtype).contiguous(memory_format=memory_format)
    weight = torch.randn(k, c, 3, 3, generator=gen, dtype=torch.float64).to(dtype)
    b = torch.randn(k, generator=gen, dtype=torch.float64).to(dtype) if bias else None
    oh, ow = h + 2 * padding[0] - 2, w + 2 * padding[1] - 2
    grad_out = torch.randn(n, k, oh, ow, generator=gen, dtype=torch.float64).to(dtype)
    return x, weight, b, list(padding), grad_out.contiguous(memory_format=memory_format)


def reference(x, weight, b, padding, grad_out):
    """Output and grad_input from torch, in x's dtype."""
    xr = x.detach().clone().requires_grad_()
    y = F.conv2d(xr, weight, b, padding=padding)
    (gx,) = torch.autograd.grad(y, xr, grad_out)
    return y.detach(), gx


def emulated(x, weight, b, padding, grad_out, tile, suffix=""):
    ops = torch.ops.fastdl_cuda_emulation
    y = getattr(ops, "conv2d_winograd" + suffix)(x, weight, b, padding, tile)
    gx, gw, gb = getattr(ops, "conv2d_winograd_backward" + suffix)(grad_out, x, weight, padding, tile, GRAD_INPUT_ONLY)
    assert gw.numel() == 0 and gb.numel() == 0
    return y, gx


def layout_of(case, memory_format):
    """The outputs' expected memory format; None where one channel or one pixel makes the input's ambiguous."""
    n, c, h, w, k, (ph, pw) = case
    oh, ow = h + 2 * ph - 2, w + 2 * pw - 2
    return memory_format if min(c, k, h * w, oh * ow) > 1 else None


def rel_l2(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-300)).item()


def check(got, want64, dtype, tile, memory_format):
    """got against a float64 reference, in memory_format unless that is None."""
    assert got.shape == want64.shape and got.dtype == dtype
    if memory_format is not None:
        assert got.is_contiguous(memory_format=memory_format)
    assert torch.isfinite(got).all()  # outputs start as NaN: every element was written
    if dtype == torch.float64:
        scale = want64.abs().max().clamp_min(1e-30)
        torch.testing.assert_close(got / scale, want64 / scale, **tolerance("conv2d", dtype))
    else:
        assert rel_l2(got, want64) <= WINOGRAD_FLOAT32_REL_L2[tile]


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_emulated_winograd_matches_torch(case, memory_format, dtype, tile, winograd_kernel):
    bias = CASES.index(case) % 2 == 0
    x, weight, b, padding, grad_out = make_inputs(case, dtype, bias, memory_format)
    # The float64 reference on the same (rounded) inputs.
    want = reference(x.double(), weight.double(), None if b is None else b.double(), padding, grad_out.double())
    for got, ref in zip(emulated(x, weight, b, padding, grad_out, tile), want):
        check(got, ref, dtype, tile, layout_of(case, memory_format))


def random_cases(count, seed):
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        h, w, ph, pw = rng.randint(1, 13), rng.randint(1, 17), rng.randint(0, 3), rng.randint(0, 3)
        if h + 2 * ph >= 3 and w + 2 * pw >= 3:
            cases.append((rng.randint(1, 3), rng.randint(1, 20), h, w, rng.randint(1, 20), (ph, pw)))
    return cases


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("case", random_cases(8, seed=5), ids=case_id)
def test_emulated_winograd_random_shapes(case, tile, winograd_kernel):
    memory_format = torch.channels_last if case[0] % 2 else torch.contiguous_format
    x, weight, b, padding, grad_out = make_inputs(case, torch.float64, case[1] % 2 == 1, memory_format, seed=1)
    want = reference(x, weight, b, padding, grad_out)
    for got, ref in zip(emulated(x, weight, b, padding, grad_out, tile), want):
        check(got, ref, torch.float64, tile, layout_of(case, memory_format))


# Several GEMM row tiles (K > 64) and column tiles (> 128 tiles per chunk), int64 indices.
LARGE = [(2, 12, 30, 26, 70, (1, 1)), (1, 9, 41, 37, 66, (0, 2))]


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", LARGE + CASES[2:4], ids=case_id)
def test_emulated_winograd_int64_device_plan(case, memory_format, tile, winograd_kernel):
    x, weight, b, padding, grad_out = make_inputs(case, torch.float32, True, memory_format, seed=2)
    want = reference(x.double(), weight.double(), b.double(), padding, grad_out.double())
    for got, ref in zip(emulated(x, weight, b, padding, grad_out, tile, "_int64"), want):
        check(got, ref, torch.float32, tile, layout_of(case, memory_format))


def test_emulated_winograd_large_case_in_small_chunks():
    x, weight, b, padding, grad_out = make_inputs(LARGE[0], torch.float64, True, torch.contiguous_format, seed=3)
    want = reference(x, weight, b, padding, grad_out)
    for got, ref in zip(emulated(x, weight, b, padding, grad_out, 4), want):
        check(got, ref, torch.float64, 4, torch.contiguous_format)


def weight_reference(x, weight, padding, grad_out):
    wr = weight.detach().clone().requires_grad_()
    (gw,) = torch.autograd.grad(F.conv2d(x, wr, padding=padding), wr, grad_out)
    return gw


def emulated_weight_grad(x, weight, padding, grad_out, tile, suffix=""):
    op = getattr(torch.ops.fastdl_cuda_emulation, "conv2d_winograd_backward" + suffix)
    gx, gw, gb = op(grad_out, x, weight, padding, tile, [False, True, False])
    assert gx.numel() == 0 and gb.numel() == 0
    return gw


def check_weight_grad(got, want64, dtype, tile):
    assert got.shape == want64.shape and got.dtype == dtype and got.is_contiguous()
    if dtype == torch.float64:
        scale = want64.abs().max().clamp_min(1e-30)
        torch.testing.assert_close(got / scale, want64 / scale, **tolerance("conv2d", dtype))
    else:  # sums over few tiles: a few roundings more than the bound (as tests/test_winograd.py)
        assert rel_l2(got, want64) <= 4 * WINOGRAD_FLOAT32_REL_L2[tile]


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_emulated_winograd_weight_gradient_matches_torch(case, memory_format, dtype, tile, monkeypatch):
    """The Winograd weight gradient (split products, partial sums over chunks), forced on every shape."""
    monkeypatch.setenv("FASTDL_WINOGRAD_WEIGHT_GRAD", "always")
    x, weight, _, padding, grad_out = make_inputs(case, dtype, False, memory_format)
    want = weight_reference(x.double(), weight.double(), padding, grad_out.double())
    check_weight_grad(emulated_weight_grad(x, weight, padding, grad_out, tile), want, dtype, tile)


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", LARGE + [(3, 64, 20, 20, 64, (1, 1))], ids=case_id)
def test_emulated_winograd_weight_gradient_int64_device_plan(case, memory_format, tile, monkeypatch):
    """64-bit indices and the device's chunks and splits (the last case: a 64-channel layer, split)."""
    monkeypatch.setenv("FASTDL_WINOGRAD_WEIGHT_GRAD", "always")
    x, weight, _, padding, grad_out = make_inputs(case, torch.float32, False, memory_format, seed=4)
    want = weight_reference(x.double(), weight.double(), padding, grad_out.double())
    got = emulated_weight_grad(x, weight, padding, grad_out, tile, "_int64")
    check_weight_grad(got, want, torch.float32, tile)


@pytest.mark.parametrize("mode", ["always", "never", ""])
def test_emulated_weight_gradient_choice(mode, monkeypatch):
    """On a small layer the rule takes the direct kernel; the override reaches both; all agree."""
    monkeypatch.setenv("FASTDL_WINOGRAD_WEIGHT_GRAD", mode)
    x, weight, _, padding, grad_out = make_inputs(CASES[2], torch.float64, False, torch.contiguous_format)
    got = emulated_weight_grad(x, weight, padding, grad_out, 4)
    check_weight_grad(got, weight_reference(x, weight, padding, grad_out), torch.float64, 4)
    monkeypatch.setenv("FASTDL_WINOGRAD_WEIGHT_GRAD", "never")
    direct = emulated_weight_grad(x, weight, padding, grad_out, 4)
    assert torch.equal(got, direct) == (mode != "always")


def test_emulated_winograd_unbatched_input_and_weight_gradients_through_the_direct_kernel(winograd_kernel):
    x, weight, b, padding, grad_out = make_inputs(CASES[2], torch.float64, True, torch.contiguous_format)
    x, grad_out = x[0], grad_out[0]
    y_ref, gx_ref = reference(x, weight, b, padding, grad_out)
    ops = torch.ops.fastdl_cuda_emulation
    y = ops.conv2d_winograd(x, weight, b, padding, 2)
    gx, gw, gb = ops.conv2d_winograd_backward(grad_out, x, weight, padding, 2, [True, True, True])
    wr = weight.clone().requires_grad_()
    (gw_ref,) = torch.autograd.grad(F.conv2d(x, wr, b, padding=padding), wr, grad_out)
    for got, ref in [(y, y_ref), (gx, gx_ref), (gw, gw_ref), (gb, grad_out.sum((1, 2)))]:
        check(got, ref, torch.float64, 2, torch.contiguous_format)


def test_emulated_winograd_rejects_reduced_precision_other_tiles_and_5x5():
    x, weight, b, padding, _ = make_inputs(CASES[0], torch.float32, True, torch.contiguous_format)
    ops = torch.ops.fastdl_cuda_emulation
    with pytest.raises(RuntimeError, match="tile"):
        ops.conv2d_winograd(x, weight, b, padding, 3)
    with pytest.raises(RuntimeError):
        ops.conv2d_winograd(x.half(), weight.half(), b.half(), padding, 2)
    weight5 = torch.randn(weight.shape[0], weight.shape[1], 5, 5)
    with pytest.raises(RuntimeError, match=r"expected a 3x3 weight .* \(5x5 is CPU-only\)"):
        ops.conv2d_winograd(x, weight5, b, [2, 2], 2)
