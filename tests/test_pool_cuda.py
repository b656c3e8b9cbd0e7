"""CUDA-only pooling checks: float16/bfloat16 against a float64 reference (at most twice PyTorch's
own error), the current stream, and 64-bit indexing of large tensors. Float32/float64 CUDA values
are covered by the device-parametrized tests in test_pool_values.py and test_pool_autograd.py."""

import pytest
import torch
import torch.nn.functional as F

import fastdl
from conftest import REDUCED_PRECISION_FACTOR

pytestmark = pytest.mark.cuda

REDUCED = [torch.float16, torch.bfloat16]
LAYOUTS = [torch.contiguous_format, torch.channels_last]


def relative_error(t: torch.Tensor, ref: torch.Tensor) -> float:
    return ((t.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def assert_within_torch_error(ours, theirs, ref64, dtype):
    err_ours, err_torch = relative_error(ours, ref64), relative_error(theirs, ref64)
    floor = torch.finfo(dtype).eps / 2  # one rounding of the output
    assert err_ours <= REDUCED_PRECISION_FACTOR * max(err_torch, floor), (err_ours, err_torch)


@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("config", [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2),
                                    dict(kernel_size=3, stride=2, dilation=2, ceil_mode=True)])
def test_max_pool2d_reduced_precision_matches_torch_exactly(config, fmt, dtype):
    x = torch.randn(4, 24, 33, 31, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    out, idx = fastdl.ops.max_pool2d(x, return_indices=True, **config)
    ref, ref_idx = F.max_pool2d(x, return_indices=True, **config)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn_like(ref)
    fastdl.ops.max_pool2d(a, **config).backward(g)
    F.max_pool2d(b, **config).backward(g)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("op", ["avg", "adaptive", "global"])
def test_average_pooling_reduced_precision_error(op, fmt, dtype):
    # torch's padded average pooling runs in N,C,H,W: its channels-last CUDA backward is wrong with
    # padding (pytorch/pytorch#188344, seen in torch 2.11); the values are the same either way.
    fns = {
        "avg": lambda t: F.avg_pool2d(t.contiguous(), 3, 2, 1, count_include_pad=False),
        "adaptive": lambda t: F.adaptive_avg_pool2d(t, (5, 7)),
        "global": lambda t: F.adaptive_avg_pool2d(t, 1),
    }
    ours_fns = {
        "avg": lambda t: fastdl.ops.avg_pool2d(t, 3, 2, 1, count_include_pad=False),
        "adaptive": lambda t: fastdl.ops.adaptive_avg_pool2d(t, (5, 7)),
        "global": lambda t: fastdl.ops.adaptive_avg_pool2d(t, 1),
    }
    x64 = torch.randn(8, 64, 28, 28, device="cuda", dtype=torch.float64).contiguous(memory_format=fmt)
    x = x64.to(dtype)
    ref64 = fns[op](x.double())
    assert_within_torch_error(ours_fns[op](x), fns[op](x), ref64, dtype)
    g = torch.randn_like(ref64)
    grads = []
    for fn, t in ((ours_fns[op], x), (fns[op], x), (fns[op], x.double())):
        leaf = t.clone().requires_grad_()
        fn(leaf).backward(g.to(t.dtype))
        grads.append(leaf.grad)
    assert_within_torch_error(grads[0], grads[1], grads[2], dtype)


def test_runs_on_the_current_stream():
    x = torch.randn(16, 64, 56, 56, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fastdl.ops.max_pool2d(x, 3, 2, 1)
        avg = fastdl.ops.adaptive_avg_pool2d(x, 1)
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(out, F.max_pool2d(x, 3, 2, 1), rtol=0, atol=0)
    torch.testing.assert_close(avg, F.adaptive_avg_pool2d(x, 1))


def test_large_tensor_uses_64_bit_indexing():
    # 2^30 + elements: past the int32 fast path's limit (half the int32 range).
    x = torch.randn(1, 2, 23200, 23200, device="cuda", dtype=torch.float16)
    assert x.numel() > 2**30
    out, idx = fastdl.ops.max_pool2d(x, 2, return_indices=True)
    ref, ref_idx = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)
    del idx, ref_idx
    torch.testing.assert_close(fastdl.ops.avg_pool2d(x, 2), F.avg_pool2d(x, 2))
