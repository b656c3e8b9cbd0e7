"""Pooling values against PyTorch: forward and backward, over a hypothesis search of shapes, windows,
memory layouts and input values, in float32 and float64 (CPU, and CUDA where present)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdl
from conftest import tolerance
from pool_cases import (adaptive_cases, make_input, pool_cases, torch_avg_pool2d_backward, torch_max_pool2d,
                        torch_max_pool2d_backward)

DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.float64]
aten = torch.ops.aten


def max_args(case):
    return dict(kernel_size=case.kernel, stride=case.stride, padding=case.padding,
                dilation=case.dilation, ceil_mode=case.ceil_mode)


def avg_args(case):
    return dict(kernel_size=case.kernel, stride=case.stride, padding=case.padding,
                ceil_mode=case.ceil_mode, count_include_pad=case.count_include_pad,
                divisor_override=case.divisor_override)


def grad_like(t: torch.Tensor, seed: int, transposed: bool) -> torch.Tensor:
    """Random values shaped like t; optionally a non-contiguous view."""
    g = torch.randn(t.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=t.dtype).to(t.device)
    return g.transpose(-1, -2).contiguous().transpose(-1, -2) if transposed else g


def assert_same_layout(out, ref):
    if out.numel() > 1:
        assert out.stride() == ref.stride(), f"strides {out.stride()} vs torch's {ref.stride()}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=150, deadline=None)
@given(case=pool_cases("max"))
def test_max_pool2d_forward(case, dtype, device):
    x = case.input(dtype, device)
    out, idx = fastdl.ops.max_pool2d(x, return_indices=True, **max_args(case))
    ref, ref_idx = torch_max_pool2d(x, **max_args(case))
    torch.testing.assert_close(out, ref, equal_nan=True, **tolerance("max_pool", dtype))
    assert torch.equal(idx, ref_idx)
    assert_same_layout(out, ref)
    assert_same_layout(idx, ref_idx)
    values_only = torch.ops.fastdl.max_pool2d(x, case.kernel, case.stride, case.padding,
                                              case.dilation, case.ceil_mode)
    torch.testing.assert_close(values_only, ref, equal_nan=True, **tolerance("max_pool", dtype))
    assert_same_layout(values_only, ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=150, deadline=None)
@given(case=pool_cases("max"), transposed_grad=st.booleans())
def test_max_pool2d_backward(case, transposed_grad, dtype, device):
    x = case.input(dtype, device)
    a = max_args(case)
    ref, idx = torch_max_pool2d(x, **a)
    g = grad_like(ref, case.seed, transposed_grad)
    k, s, p, d, c = a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"]
    got = torch.ops.fastdl.max_pool2d_backward(g, x, idx, k, s, p, d, c)
    want = torch_max_pool2d_backward(g, x, idx, k, s, p, d, c)
    torch.testing.assert_close(got, want, **tolerance("max_pool", dtype))
    assert_same_layout(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=150, deadline=None)
@given(case=pool_cases("avg"))
def test_avg_pool2d_forward(case, dtype, device):
    x = case.input(dtype, device)
    out = fastdl.ops.avg_pool2d(x, **avg_args(case))
    ref = F.avg_pool2d(x, **avg_args(case))
    torch.testing.assert_close(out, ref, **tolerance("avg_pool", dtype))
    assert_same_layout(out, ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=150, deadline=None)
@given(case=pool_cases("avg"), transposed_grad=st.booleans())
def test_avg_pool2d_backward(case, transposed_grad, dtype, device):
    x = case.input(dtype, device)
    a = avg_args(case)
    g = grad_like(F.avg_pool2d(x, **a), case.seed, transposed_grad)
    args = (a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"],
            a["divisor_override"])
    got = torch.ops.fastdl.avg_pool2d_backward(g, x, *args)
    want = torch_avg_pool2d_backward(g, x, *args)
    torch.testing.assert_close(got, want, **tolerance("avg_pool", dtype))
    assert_same_layout(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=120, deadline=None)
@given(case=adaptive_cases(), transposed_grad=st.booleans())
def test_adaptive_avg_pool2d(case, transposed_grad, dtype, device):
    shape, layout, out_size, seed = case
    x = make_input(shape, layout, "normal", dtype, device, seed)
    out = fastdl.ops.adaptive_avg_pool2d(x, out_size)
    ref = F.adaptive_avg_pool2d(x, out_size)
    torch.testing.assert_close(out, ref, **tolerance("avg_pool", dtype))
    assert_same_layout(out, ref)
    g = grad_like(ref, seed, transposed_grad)
    got = torch.ops.fastdl.adaptive_avg_pool2d_backward(g, x)
    want = aten._adaptive_avg_pool2d_backward(g, x)
    torch.testing.assert_close(got, want, **tolerance("avg_pool", dtype))
    assert_same_layout(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_global_average_pooling_of_resnet_features(device):
    x = torch.randn(4, 2048, 7, 7, device=device)
    for size in (1, (1, 1), (None, 1)):
        ref = F.adaptive_avg_pool2d(x, size)
        torch.testing.assert_close(fastdl.ops.adaptive_avg_pool2d(x, size), ref, **tolerance("avg_pool", x.dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_adaptive_output_size_none_keeps_the_input_size(device):
    x = torch.randn(2, 3, 9, 7, device=device)
    out = fastdl.ops.adaptive_avg_pool2d(x, (None, 3))
    torch.testing.assert_close(out, F.adaptive_avg_pool2d(x, (None, 3)))
    assert out.shape == (2, 3, 9, 3)


@pytest.mark.parametrize("device", DEVICES)
def test_max_pool2d_nan_and_ties_follow_torch(device):
    # Row-major first maximum on ties; the last NaN of a window wins; all -inf keeps the first tap.
    x = torch.tensor([[[[1.0, 3.0, 3.0, 0.0],
                        [3.0, float("nan"), 2.0, float("nan")],
                        [float("-inf"), float("-inf"), 5.0, 5.0],
                        [float("-inf"), float("-inf"), 5.0, 1.0]]]], device=device)
    out, idx = fastdl.ops.max_pool2d(x, 2, return_indices=True)
    ref, ref_idx = F.max_pool2d(x, 2, return_indices=True)
    torch.testing.assert_close(out, ref, equal_nan=True, rtol=0, atol=0)
    assert idx.tolist() == ref_idx.tolist() == [[[[5, 7], [8, 10]]]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["max", "avg", "adaptive"])
def test_empty_batch(op, device):
    x = torch.randn(0, 3, 8, 8, device=device, requires_grad=True)
    if op == "max":
        out = fastdl.ops.max_pool2d(x, 2)
    elif op == "avg":
        out = fastdl.ops.avg_pool2d(x, 3, 2, 1)
    else:
        out = fastdl.ops.adaptive_avg_pool2d(x, 3)
    assert out.shape == (0, 3, 4 if op != "adaptive" else 3, 4 if op != "adaptive" else 3)
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("device", DEVICES)
def test_adaptive_output_size_zero_gives_empty_output_and_zero_grad(device):
    x = torch.randn(2, 3, 5, 5, device=device, requires_grad=True)
    out = fastdl.ops.adaptive_avg_pool2d(x, (0, 2))
    assert out.shape == F.adaptive_avg_pool2d(x, (0, 2)).shape == (2, 3, 0, 2)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["max", "avg", "adaptive"])
def test_autograd_matches_torch(op, device):
    x = torch.randn(3, 4, 13, 11, dtype=torch.float64, device=device)
    fns = {
        "max": (lambda t: fastdl.ops.max_pool2d(t, 3, 2, 1, ceil_mode=True),
                lambda t: F.max_pool2d(t, 3, 2, 1, ceil_mode=True)),
        "avg": (lambda t: fastdl.ops.avg_pool2d(t, 3, 2, 1, count_include_pad=False),
                lambda t: F.avg_pool2d(t, 3, 2, 1, count_include_pad=False)),
        "adaptive": (lambda t: fastdl.ops.adaptive_avg_pool2d(t, (4, 5)),
                     lambda t: F.adaptive_avg_pool2d(t, (4, 5))),
    }
    ours, theirs = fns[op]
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn_like(theirs(x))
    ours(a).backward(g)
    theirs(b).backward(g)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


def test_values_only_max_pool2d_is_differentiable():
    # The inference op keeps no indices; differentiating it recomputes them.
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    out = torch.ops.fastdl.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], False)
    out.sum().backward()
    y = x.detach().clone().requires_grad_()
    F.max_pool2d(y, 3, 2, 1).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=0, atol=0)


def test_outputs_are_poisoned_in_tests():
    # The suite relies on this to catch unwritten outputs (tests/conftest.py sets it).
    assert fastdl._C.poison_outputs()


@pytest.mark.parametrize("device", DEVICES)
def test_max_pool2d_window_entirely_in_padding(device):
    # Dilated taps at -1 and +1 of a width-1 input: the window holds no element. Like torch, the
    # output is -inf with an index outside the plane; the gradient of such an output is zero.
    x = torch.randn(2, 3, 4, 1, dtype=torch.float64, device=device, requires_grad=True)
    out, idx = fastdl.ops.max_pool2d(x, (1, 2), 1, (0, 1), (1, 2), return_indices=True)
    ref, ref_idx = F.max_pool2d(x.detach(), (1, 2), 1, (0, 1), (1, 2), return_indices=True)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)
    assert torch.isneginf(out).all()
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", [lambda t: fastdl.ops.adaptive_avg_pool2d(t, t.shape[-2:]),
                                lambda t: fastdl.ops.avg_pool2d(t, 1),
                                lambda t: fastdl.ops.avg_pool2d(t, 1, divisor_override=1)])
def test_identity_windows_copy_the_input(op, device):
    # One-element windows divided by 1 (AlexNet's and VGG's adaptive pooling at 224x224) are a
    # copy: equal values, a new tensor, and the gradient passes through unchanged.
    x = torch.randn(2, 3, 6, 5, device=device).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    out = op(x)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    assert out.stride() == x.stride()
    g = torch.randn_like(out)
    out.backward(g)
    assert torch.equal(x.grad, g)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("config", [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2),
                                    dict(kernel_size=3, stride=1, padding=1, count_include_pad=False),
                                    dict(kernel_size=5, stride=3, ceil_mode=True)])
def test_avg_pool2d_sums_in_torchs_order_on_cpu(config, fmt):
    # The README's claim: the same summation order and divisor as PyTorch, so equal to the bit.
    x = torch.randn(4, 32, 31, 29).contiguous(memory_format=fmt)
    out, ref = fastdl.ops.avg_pool2d(x, **config), F.avg_pool2d(x, **config)
    assert torch.equal(out, ref)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn_like(ref)
    fastdl.ops.avg_pool2d(a, **config).backward(g)
    F.avg_pool2d(b, **config).backward(g)
    assert torch.equal(a.grad, b.grad)
