"""One small call of every CUDA kernel path, for `make gpu-sanitize` (compute-sanitizer's memcheck and
racecheck are far too slow for the whole suite): the direct convolution's FFMA and tensor-core tiles
with and without split reductions, forward and both gradients, both layouts; Winograd forward, input
and weight gradients at both tiles, staged and fused; the LSTM/GRU small-batch and cuBLAS paths, forward and backward,
bidirectional (two streams); pooling and batch norm. Values are checked loosely against torch, so a
run that the sanitizer lets through also computed something sensible. Not collected by pytest.

    PYTHONPATH=python compute-sanitizer --tool memcheck python3 tests/cuda_kernel_calls.py
"""

import os

import torch
import torch.nn.functional as F

import fastdl

DEVICE = "cuda"


def close(got, want, what):
    scale = want.abs().max().clamp_min(1e-6)
    err = ((got.float() - want.float()).abs().max() / scale).item()
    assert err < 3e-2, f"{what}: {err}"


def conv_calls():
    for dtype in (torch.float32, torch.bfloat16):
        for fmt in (torch.contiguous_format, torch.channels_last):
            # A small layer (no split) and a deep one with few tiles (split reductions).
            for n, c, hw, k, r in ((2, 8, 9, 12, 3), (1, 256, 5, 70, 3)):
                x = torch.randn(n, c, hw, hw, device=DEVICE).to(dtype).contiguous(memory_format=fmt)
                w = torch.randn(k, c, r, r, device=DEVICE).to(dtype) / (c * r * r) ** 0.5
                b = torch.randn(k, device=DEVICE).to(dtype)
                g = torch.randn(n, k, hw, hw, device=DEVICE).to(dtype).contiguous(memory_format=fmt)
                args = ([1, 1], [1, 1], [1, 1], 1)
                y = torch.ops.fastdl.conv2d(x, w, b, *args)
                gx, gw, gb = torch.ops.fastdl.conv2d_backward(g, x, w, *args, [True, True, True])
                xr, wr = x.float().requires_grad_(), w.float().requires_grad_()
                yr = F.conv2d(xr, wr, b.float(), padding=1)
                gxr, gwr = torch.autograd.grad(yr, (xr, wr), g.float())
                for got, want, what in ((y, yr, "y"), (gx, gxr, "dx"), (gw, gwr, "dw")):
                    close(got, want.detach(), f"conv {dtype} {fmt} {c} {what}")


def winograd_calls():
    os.environ["FASTDL_WINOGRAD_WEIGHT_GRAD"] = "always"
    try:
        for tile, fused in ((2, "never"), (4, "never"), (2, "always"), (4, "always")):
            os.environ["FASTDL_WINOGRAD_FUSED"] = fused
            x = torch.randn(2, 20, 13, 11, device=DEVICE)
            w = torch.randn(24, 20, 3, 3, device=DEVICE) / 13
            g = torch.randn(2, 24, 13, 11, device=DEVICE)
            y = torch.ops.fastdl.conv2d_winograd(x, w, None, [1, 1], tile)
            gx, gw, _ = torch.ops.fastdl.conv2d_winograd_backward(g, x, w, [1, 1], tile, [True, True, False])
            xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
            yr = F.conv2d(xr, wr, padding=1)
            gxr, gwr = torch.autograd.grad(yr, (xr, wr), g)
            for got, want, what in ((y, yr, "y"), (gx, gxr, "dx"), (gw, gwr, "dw")):
                close(got, want.detach(), f"winograd F{tile} fused {fused} {what}")
    finally:
        del os.environ["FASTDL_WINOGRAD_WEIGHT_GRAD"]
        os.environ.pop("FASTDL_WINOGRAD_FUSED", None)


def rnn_calls():
    for kind in ("LSTM", "GRU"):
        for batch in (3, 20):  # the small-batch kernels, then cuBLAS and the cell kernel
            torch.manual_seed(0)
            theirs = getattr(torch.nn, kind)(8, 12, bidirectional=True).to(DEVICE)
            ours = getattr(fastdl.nn, kind)(8, 12, bidirectional=True).to(DEVICE)
            ours.load_state_dict(theirs.state_dict())
            x = torch.randn(5, batch, 8, device=DEVICE)
            results = []
            for m in (ours, theirs):
                xr = x.clone().requires_grad_()
                out, _ = m(xr)
                (gx,) = torch.autograd.grad(out.square().sum(), xr)
                results.append((out.detach(), gx))
            for got, want in zip(*results):
                close(got, want, f"{kind} batch {batch}")


def pool_and_norm_calls():
    x = torch.randn(4, 16, 7, 7, device=DEVICE, requires_grad=True)
    for fn, ref in ((lambda t: fastdl.ops.adaptive_avg_pool2d(t, 1), lambda t: F.adaptive_avg_pool2d(t, 1)),
                    (lambda t: fastdl.ops.max_pool2d(t, 3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1))):
        (got,) = torch.autograd.grad(fn(x).square().sum(), x)
        (want,) = torch.autograd.grad(ref(x).square().sum(), x)
        close(got, want, "pooling")
    bn = fastdl.nn.BatchNorm2d(16).to(DEVICE)
    close(bn(x), F.batch_norm(x, None, None, training=True), "batch norm")


if __name__ == "__main__":
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    for calls in (conv_calls, winograd_calls, rnn_calls, pool_and_norm_calls):
        calls()
        torch.cuda.synchronize()
        print(calls.__name__, "ok", flush=True)
