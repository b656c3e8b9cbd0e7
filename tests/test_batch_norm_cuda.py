"""CUDA-only batch normalization checks: float16/bfloat16 inputs with float32 statistics and float32
or same-dtype parameters (error at most twice PyTorch's against float64), shapes large enough to
split every channel over many blocks, and the current stream. Float32/float64 CUDA values are
covered by the device-parametrized tests in test_batch_norm.py."""

import pytest
import torch
import torch.nn.functional as F

import fastdl
from conftest import REDUCED_PRECISION_FACTOR

pytestmark = pytest.mark.cuda


def rel_error(t, ref):
    return ((t.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("param_dtype", ["same", torch.float32])
@pytest.mark.parametrize("shape,fmt", [((16, 64, 28, 28), torch.contiguous_format),
                                       ((16, 64, 28, 28), torch.channels_last), ((512, 256), torch.contiguous_format)])
def test_reduced_precision(dtype, param_dtype, shape, fmt):
    pdt = dtype if param_dtype == "same" else param_dtype
    torch.manual_seed(0)
    x = (torch.randn(shape, device="cuda") * 2 + 1).to(dtype).contiguous(memory_format=fmt)
    C = shape[1]
    w, b = torch.randn(C, device="cuda").to(pdt), torch.randn(C, device="cuda").to(pdt)
    rm_a, rv_a = torch.zeros(C, device="cuda", dtype=pdt), torch.ones(C, device="cuda", dtype=pdt)
    rm_b, rv_b = rm_a.clone(), rv_a.clone()
    ref = F.batch_norm(x.double(), None, None, w.double(), b.double(), training=True)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = fastdl.ops.batch_norm(xa, rm_a, rv_a, w, b, True, 0.1, 1e-5)
    theirs = F.batch_norm(xb, rm_b, rv_b, w, b, True, 0.1, 1e-5)
    assert ours.dtype == dtype and ours.stride() == theirs.stride()
    floor = torch.finfo(dtype).eps
    assert rel_error(ours, ref) <= REDUCED_PRECISION_FACTOR * max(rel_error(theirs, ref), floor)
    torch.testing.assert_close(rm_a.float(), rm_b.float(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(rv_a.float(), rv_b.float(), rtol=1e-2, atol=1e-2)
    g = torch.randn_like(ref)
    x64 = x.double().requires_grad_()
    F.batch_norm(x64, None, None, w.double(), b.double(), training=True).backward(g)
    ours.backward(g.to(dtype))
    theirs.backward(g.to(dtype))
    assert rel_error(xa.grad, x64.grad) <= REDUCED_PRECISION_FACTOR * max(rel_error(xb.grad, x64.grad), floor)


@pytest.mark.parametrize("shape,fmt", [((32, 64, 112, 112), torch.contiguous_format),
                                       ((8, 256, 56, 56), torch.channels_last), ((4096, 2048), torch.contiguous_format),
                                       ((2, 3, 257, 263), torch.contiguous_format)])
def test_large_shapes_split_across_blocks(shape, fmt):
    torch.manual_seed(0)
    x = (torch.randn(shape, device="cuda") * 3 + 5).contiguous(memory_format=fmt)
    C = shape[1]
    w, b = torch.randn(C, device="cuda"), torch.randn(C, device="cuda")
    rm_a, rv_a = torch.zeros(C, device="cuda"), torch.ones(C, device="cuda")
    rm_b, rv_b = rm_a.clone(), rv_a.clone()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = fastdl.ops.batch_norm(xa, rm_a, rv_a, w, b, True)
    theirs = F.batch_norm(xb, rm_b, rv_b, w, b, True)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rm_a, rm_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rv_a, rv_b, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(x)
    ours.backward(g)
    theirs.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-3, atol=1e-4)


def test_runs_on_the_current_stream():
    x = torch.randn(32, 256, 28, 28, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fastdl.ops.batch_norm(x, None, None, training=True)
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(out, F.batch_norm(x, None, None, training=True), rtol=1e-4, atol=1e-4)


def test_layer_with_mixed_precision_autocast():
    # Under autocast a BatchNorm2d layer keeps float32 parameters while its input may be float16.
    bn = fastdl.nn.BatchNorm2d(16).cuda()
    ref = torch.nn.BatchNorm2d(16).cuda()
    x = torch.randn(8, 16, 10, 10, device="cuda").half()
    torch.testing.assert_close(bn(x), ref(x), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(bn.running_var, ref.running_var, rtol=1e-3, atol=1e-3)
