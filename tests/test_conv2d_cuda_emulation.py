"""The CUDA convolution kernels' host emulation (csrc/cuda/conv2d_kernels.h) against
torch.nn.functional.conv2d on the CPU: the tile kernel's operand loaders, tile bounds, double buffering,
split-K grad_weight plan and split sums, the forward's and grad_input's split reductions, run on the
host with the plan of an H100. It proves the
kernels' indexing on machines without a GPU; tests/test_conv2d_cuda.py runs the kernels themselves."""

import pytest
import torch
import torch.nn.functional as F

import fastdl
from conv_cases import CASES, GRID, assert_matches, case_id, make_inputs, torch_reference

pytestmark = pytest.mark.skipif(not fastdl.cuda_enabled(), reason="CUDA kernels not built")

ALL = [True, True, True]


def emulated(x, w, b, args, grad_out, mask=ALL):
    ops = torch.ops.fastdl_cuda_emulation
    return (ops.conv2d(x, w, b, *args), *ops.conv2d_backward(grad_out, x, w, *args, mask))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("input_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", GRID, ids=case_id)
def test_emulated_kernels_match_torch(case, input_format, dtype):
    x, w, b, args = make_inputs(case, dtype, "cpu", True, input_format)
    y_ref = F.conv2d(x, w, b, *args)
    gen = torch.Generator().manual_seed(1)
    grad_out = torch.randn(y_ref.shape, generator=gen, dtype=dtype).contiguous(memory_format=input_format)
    mine = emulated(x, w, b, args, grad_out)
    for got, want in zip(mine, torch_reference(x, w, b, args, grad_out)):
        assert_matches(got, want, dtype)


@pytest.mark.parametrize("mask", [[True, False, False], [False, True, False], [False, False, True]])
@pytest.mark.parametrize("input_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_emulated_output_mask_and_no_bias(mask, input_format):
    x, w, _, args = make_inputs(CASES[10], torch.float64, "cpu", False, input_format)
    y = torch.ops.fastdl_cuda_emulation.conv2d(x, w, None, *args)
    grad_out = torch.randn_like(y)
    want = torch_reference(x, w, None, args, grad_out)
    assert_matches(y, want[0], torch.float64)
    got = torch.ops.fastdl_cuda_emulation.conv2d_backward(grad_out, x, w, *args, mask)
    for wanted, g, ref in zip(mask, got, want[1:]):
        if wanted:
            assert_matches(g, ref, torch.float64)
        else:
            assert g.numel() == 0


def test_emulated_channels_last_weight_and_unbatched_input():
    x, w, b, args = make_inputs(CASES[6], torch.float64, "cpu", True, weight_format=torch.channels_last)
    x = x[0]
    grad_out = torch.randn_like(F.conv2d(x, w, b, *args))
    for got, want in zip(emulated(x, w, b, args, grad_out), torch_reference(x, w, b, args, grad_out)):
        assert_matches(got, want, torch.float64)


# Few tiles and deep reductions: the forward's and grad_input's GEMMs split over their depth
# (SplitDepth; 2-4 splits on the emulated H100): a wide layer on a small map, two groups, a 1x1
# convolution, a strided one, and a reduction that does not divide evenly.
SPLIT = [
    (1, 64, 7, 7, 70, (3, 3), 1, 1, 1, 1),
    (2, 64, 5, 5, 64, (3, 3), 1, 1, 1, 2),
    (1, 300, 4, 4, 20, (1, 1), 1, 0, 1, 1),
    (1, 40, 9, 9, 40, (3, 3), 2, 1, 1, 1),
    (1, 29, 6, 5, 33, (3, 3), 1, 1, 1, 1),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("input_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", SPLIT, ids=case_id)
def test_emulated_split_reductions_match_torch(case, input_format, dtype):
    x, w, b, args = make_inputs(case, dtype, "cpu", True, input_format)
    y_ref = F.conv2d(x, w, b, *args)
    grad_out = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    grad_out = grad_out.contiguous(memory_format=input_format)
    for got, want in zip(emulated(x, w, b, args, grad_out), torch_reference(x, w, b, args, grad_out)):
        assert_matches(got, want, dtype)


@pytest.mark.parametrize("input_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_emulated_kernels_with_64_bit_indices(case, input_format):
    """The kernels' int64 instantiation (BK 8; plain division), which real sizes reach past 2^30 elements."""
    x, w, b, args = make_inputs(case, torch.float32, "cpu", True, input_format)
    ops = torch.ops.fastdl_cuda_emulation
    y = ops.conv2d_int64(x, w, b, *args)
    grad_out = torch.randn_like(y)
    mine = (y, *ops.conv2d_backward_int64(grad_out, x, w, *args, ALL))
    for got, want in zip(mine, torch_reference(x, w, b, args, grad_out)):
        assert_matches(got, want, torch.float32)


@pytest.mark.parametrize("input_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", GRID + SPLIT, ids=case_id)
def test_emulated_tensor_core_tile(case, input_format):
    """The float16/bfloat16 tensor-core tile's logic on float data: 16-bit staging rows, every lane's
    fragment loads multiplied by PTX's m16n8k16 layout, the results' positions (forward, both gradients,
    split reductions)."""
    x, w, b, args = make_inputs(case, torch.float32, "cpu", True, input_format)
    ops = torch.ops.fastdl_cuda_emulation
    y = ops.conv2d_mma(x, w, b, *args)
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).contiguous(memory_format=input_format)
    mine = (y, *ops.conv2d_backward_mma(grad_out, x, w, *args, ALL))
    for got, want in zip(mine, torch_reference(x, w, b, args, grad_out)):
        assert_matches(got, want, torch.float32)
