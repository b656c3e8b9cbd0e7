"""CUDA convolution checks against torch.nn.functional.conv2d (cuDNN with TF32 off: tests/conftest.py): float32 and float64
values and gradients over a grid of shapes and options in both memory formats, float16/bfloat16 within
twice PyTorch's own error against float64, output_mask subsets, empty batches, unbatched input, large
shapes (64-bit indexing past 2^31 elements) and the current stream."""

import pytest
import torch
import torch.nn.functional as F

import conv_cases
from conftest import REDUCED_PRECISION_FACTOR
from conv_cases import CASES, GRID, assert_matches, case_id, cuda_output_format, torch_reference

pytestmark = pytest.mark.cuda

DEVICE = "cuda"
ALL = [True, True, True]


def make_inputs(case, dtype, bias=True, input_format=torch.contiguous_format, weight_format=torch.contiguous_format):
    return conv_cases.make_inputs(case, dtype, DEVICE, bias, input_format, weight_format)


def ours(x, w, b, args, grad_out, mask=ALL):
    y = torch.ops.fastdl.conv2d(x, w, b, *args)
    return (y, *torch.ops.fastdl.conv2d_backward(grad_out, x, w, *args, mask))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("input_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", GRID, ids=case_id)
def test_values_and_gradients_match_torch(case, input_format, bias, dtype):
    x, w, b, args = make_inputs(case, dtype, bias, input_format)
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    y_ref = F.conv2d(x, w, b, *args)
    grad_out = torch.randn(y_ref.shape, device=DEVICE, generator=gen).to(dtype).contiguous(memory_format=input_format)
    mine = ours(x, w, b, args, grad_out)
    theirs = torch_reference(x, w, b, args, grad_out)
    for got, want in zip(mine, theirs):
        assert_matches(got, want, dtype)
    n, c, h, w_, k = case[:5]
    if min(c, k, h * w_, y_ref.shape[2] * y_ref.shape[3]) > 1:  # else both formats have the same strides
        fmt = cuda_output_format(dtype, input_format)
        assert mine[0].stride() == y_ref.stride()
        assert mine[0].is_contiguous(memory_format=fmt) and mine[1].is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [CASES[1], CASES[6], CASES[10], CASES[14]], ids=case_id)
def test_channels_last_weight_gives_torchs_output_layout(case, dtype):
    x, w, b, args = make_inputs(case, dtype, weight_format=torch.channels_last)
    assert x.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)
    y_ref = F.conv2d(x, w, b, *args)
    grad_out = torch.randn_like(y_ref)
    mine = ours(x, w, b, args, grad_out)
    for got, want in zip(mine, torch_reference(x, w, b, args, grad_out)):
        assert_matches(got, want, dtype)
    fmt = cuda_output_format(dtype, torch.channels_last)
    assert mine[0].stride() == y_ref.stride()
    assert mine[0].is_contiguous(memory_format=fmt) and mine[1].is_contiguous(memory_format=fmt)


def test_opcheck_float64_channels_last():
    # The fake kernel's layout against the kernel's for the one case where it is not the input's.
    x, w, b, args = make_inputs(CASES[1], torch.float64, True, torch.channels_last)
    torch.library.opcheck(torch.ops.fastdl.conv2d.default, (x, w, b, *args))


@pytest.mark.parametrize("weight_format", [torch.contiguous_format, torch.channels_last], ids=["w_nchw", "w_nhwc"])
@pytest.mark.parametrize("input_format", [torch.contiguous_format, torch.channels_last], ids=["x_nchw", "x_nhwc"])
def test_output_strides_as_torch(input_format, weight_format):
    x, w, b, args = make_inputs(CASES[1], torch.float32, True, input_format, weight_format)
    assert torch.ops.fastdl.conv2d(x, w, b, *args).stride() == F.conv2d(x, w, b, *args).stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[11]], ids=case_id)
def test_unbatched_input(case, dtype):
    x, w, b, args = make_inputs(case, dtype)
    x = x[0]
    y_ref = F.conv2d(x, w, b, *args)
    assert y_ref.dim() == 3
    grad_out = torch.randn_like(y_ref)
    mine = ours(x, w, b, args, grad_out)
    for got, want in zip(mine, torch_reference(x, w, b, args, grad_out)):
        assert_matches(got, want, dtype)


def rel_error(t, ref):
    return ((t.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300)).item()


REDUCED_CASES = [
    (2, 32, 14, 14, 48, (3, 3), 1, 1, 1, 1),
    (2, 3, 30, 30, 16, (7, 7), 2, 3, 1, 1),
    (2, 64, 8, 8, 32, (1, 1), 1, 0, 1, 1),
    (2, 16, 14, 14, 16, (3, 3), 1, 1, 1, 16),
    (2, 8, 16, 16, 12, (3, 3), 2, 1, 2, 2),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("input_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", REDUCED_CASES, ids=case_id)
def test_reduced_precision_within_twice_torch_error(case, input_format, dtype):
    x, w, b, args = make_inputs(case, dtype, True, input_format)
    grad_out = torch.randn_like(F.conv2d(x, w, b, *args))
    mine = ours(x, w, b, args, grad_out)
    theirs = torch_reference(x, w, b, args, grad_out)
    exact = torch_reference(x.double(), w.double(), b.double(), args, grad_out.double())
    floor = torch.finfo(dtype).eps
    for name, got, want, ref in zip(["output", "grad_input", "grad_weight", "grad_bias"], mine, theirs, exact):
        assert got.dtype == dtype
        err, torch_err = rel_error(got, ref), rel_error(want, ref)
        assert err <= REDUCED_PRECISION_FACTOR * max(torch_err, floor), (name, err, torch_err)


@pytest.mark.parametrize("mask", [[True, False, False], [False, True, False], [False, False, True],
                                  [True, True, False], [False, True, True]])
@pytest.mark.parametrize("input_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_output_mask_subsets(mask, input_format):
    x, w, b, args = make_inputs(CASES[10], torch.float32, True, input_format)
    grad_out = torch.randn_like(F.conv2d(x, w, b, *args))
    got = torch.ops.fastdl.conv2d_backward(grad_out, x, w, *args, mask)
    want = torch_reference(x, w, b, args, grad_out)[1:]
    for wanted, g, ref in zip(mask, got, want):
        if wanted:
            assert_matches(g, ref, torch.float32)
        else:
            assert g.numel() == 0


@pytest.mark.parametrize("input_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_empty_batch(input_format):
    x = torch.randn(0, 4, 9, 9, device=DEVICE).contiguous(memory_format=input_format)
    w, b = torch.randn(6, 4, 3, 3, device=DEVICE), torch.randn(6, device=DEVICE)
    args = ([1, 1], [1, 1], [1, 1], 1)
    y = torch.ops.fastdl.conv2d(x, w, b, *args)
    assert y.shape == F.conv2d(x, w, b, *args).shape == (0, 6, 9, 9)
    gi, gw, gb = torch.ops.fastdl.conv2d_backward(torch.randn(0, 6, 9, 9, device=DEVICE), x, w, *args, ALL)
    assert gi.shape == x.shape
    assert torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros_like(b))


@pytest.mark.parametrize("input_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_large_resnet_layer(input_format):
    case = (8, 256, 56, 56, 256, (3, 3), 1, 1, 1, 1)
    x, w, b, args = make_inputs(case, torch.float32, True, input_format)
    grad_out = torch.randn_like(F.conv2d(x, w, b, *args))
    for got, want in zip(ours(x, w, b, args, grad_out), torch_reference(x, w, b, args, grad_out)):
        assert_matches(got, want, torch.float32)


# Few tiles, deep reductions: the forward and grad_input split their reductions (SplitDepth in
# csrc/cuda/conv2d_gemms.cuh): ResNet-50's layer4 3x3 and layer3 1x1 and AlexNet's 5x5 at batch 1,
# a grouped layer, in half precision too.
SPLIT_CASES = [
    (1, 512, 7, 7, 512, (3, 3), 1, 1, 1, 1),
    (1, 1024, 14, 14, 256, (1, 1), 1, 0, 1, 1),
    (1, 64, 27, 27, 192, (5, 5), 1, 2, 1, 1),
    (2, 128, 9, 9, 128, (3, 3), 2, 1, 1, 4),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("input_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", SPLIT_CASES, ids=case_id)
def test_split_reductions_match_torch_and_the_unsplit_kernel(case, input_format, dtype, monkeypatch):
    x, w, b, args = make_inputs(case, dtype, True, input_format)
    grad_out = torch.randn_like(F.conv2d(x, w, b, *args))
    split = ours(x, w, b, args, grad_out)
    monkeypatch.setenv("FASTDL_CONV_SPLIT", "never")
    whole = ours(x, w, b, args, grad_out)
    exact = torch_reference(*(t.double() if t is not None else None for t in (x, w, b)), args, grad_out.double())
    for got, unsplit, want in zip(split, whole, exact):
        scale = want.abs().max()
        # The same sums in another order, both close to float64: float32/float64 sums of up to 4608
        # products; bfloat16 outputs rounded once from float sums.
        bound = (2 if dtype == torch.bfloat16 else 256) * torch.finfo(dtype).eps
        assert ((got.double() - unsplit.double()).abs().max() / scale).item() <= bound
        assert ((got.double() - want).abs().max() / scale).item() <= bound


def test_input_past_2_31_elements_uses_64_bit_indexing():
    if torch.cuda.mem_get_info()[0] < 48 * 2**30:
        pytest.skip("needs 48 GiB of free GPU memory")
    torch.manual_seed(0)
    # Two images of 1.08e9 elements each: cuDNN (the reference) splits the batch to stay in int32.
    x = torch.randn(2, 2, 23200, 23200, device=DEVICE, dtype=torch.float16)
    assert x.numel() > 2**31
    w = torch.randn(2, 2, 3, 3, device=DEVICE, dtype=torch.float16)
    b = torch.randn(2, device=DEVICE, dtype=torch.float16)
    args = ([1, 1], [1, 1], [1, 1], 1)
    y = torch.ops.fastdl.conv2d(x, w, b, *args)
    ref = F.conv2d(x, w, b, *args)
    for n in range(2):
        torch.testing.assert_close(y[n], ref[n], rtol=1e-2, atol=1e-2)
    del y, ref
    grad_out = torch.randn(2, 2, 23200, 23200, device=DEVICE, dtype=torch.float16) * 0.01
    gi, gw, gb = torch.ops.fastdl.conv2d_backward(grad_out, x, w, *args, ALL)
    ref_gi, ref_gw, ref_gb = torch.ops.aten.convolution_backward(grad_out, x, w, [2], *args[:3], False, [0, 0], 1,
                                                                 ALL)
    for n in range(2):
        torch.testing.assert_close(gi[n], ref_gi[n], rtol=1e-2, atol=1e-2)
    for got, want in ((gw, ref_gw), (gb, ref_gb)):
        scale = want.float().abs().max()
        torch.testing.assert_close(got.float() / scale, want.float() / scale, rtol=0, atol=1e-2)


def test_runs_on_the_current_stream():
    x, w, b, args = make_inputs((16, 64, 56, 56, 128, (3, 3), 1, 1, 1, 1), torch.float32)
    grad_out = torch.randn(16, 128, 56, 56, device=DEVICE)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        # The inputs are made on the side stream after a delay: a kernel on any other stream would read
        # them before they exist.
        torch.cuda._sleep(50_000_000)
        x2, g2 = x * 2, grad_out * 2
        mine = ours(x2, w, b, args, g2)
    torch.cuda.current_stream().wait_stream(side)
    for got, want in zip(mine, torch_reference(x * 2, w, b, args, grad_out * 2)):
        assert_matches(got, want, torch.float32)
