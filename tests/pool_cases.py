"""Random pooling problems for the value tests (CPU and CUDA): shapes, windows, memory layouts and
input values with ties, NaN and infinities, all drawn by hypothesis."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import assume
from hypothesis import strategies as st

LAYOUTS = ("contiguous", "channels_last", "strided", "transposed", "unbatched")
VALUES = ("normal", "ties", "nan", "neg_inf")


@dataclass
class PoolCase:
    shape: tuple[int, ...]
    layout: str
    values: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool
    count_include_pad: bool
    divisor_override: int | None
    seed: int

    def input(self, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
        return make_input(self.shape, self.layout, self.values, dtype, device, self.seed)


def make_input(shape, layout, values, dtype, device, seed) -> torch.Tensor:
    """A tensor of logical `shape` (N, C, H, W) laid out as `layout`, filled per `values`."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    if values == "ties":
        base = torch.randint(-2, 3, (n, c, h, w), generator=g).double()
    else:
        base = torch.randn((n, c, h, w), generator=g, dtype=torch.float64)
    if values in ("nan", "neg_inf") and base.numel():
        mask = torch.rand(base.shape, generator=g) < 0.15
        base[mask] = float("nan") if values == "nan" else float("-inf")
    x = base.to(dtype=dtype, device=device)
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        wide = torch.full((n, c, h, 2 * w), 7.0, dtype=dtype, device=device)
        wide[..., ::2] = x
        return wide[..., ::2]
    if layout == "transposed":
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "unbatched":
        return x[0]
    return x


def has_empty_window(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> bool:
    """Whether some output's taps all miss [0, size): possible only for dilated max pooling, where
    torch returns an index outside the window and its CPU backward writes through it."""
    out = (size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return any(all(not 0 <= o * stride - pad + j * dilation < size for j in range(kernel)) for o in range(out))


@st.composite
def pool_cases(draw, kind: str) -> PoolCase:
    """A valid max ('max') or average ('avg') pooling problem, without empty windows."""
    k = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if kind == "max" else (1, 1)
    s = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    effective = [(k[i] - 1) * d[i] + 1 for i in range(2)]
    p = tuple(draw(st.integers(0, k[i] // 2)) for i in range(2))
    h, w = (draw(st.integers(max(1, effective[i] - 2 * p[i]), effective[i] + 14)) for i in range(2))
    ceil_mode = draw(st.booleans())
    sizes = (h, w)
    assume(not any(has_empty_window(sizes[i], k[i], s[i], p[i], d[i], ceil_mode) for i in range(2)))
    layout = draw(st.sampled_from(LAYOUTS))
    batch = 1 if layout == "unbatched" else draw(st.sampled_from([0, 1, 2, 3]))
    divisor = draw(st.sampled_from([None, None, 1, 3, -2])) if kind == "avg" else None
    return PoolCase(
        shape=(batch, draw(st.integers(1, 9)), h, w),
        layout=layout,
        values=draw(st.sampled_from(VALUES)) if kind == "max" else "normal",
        kernel=k,
        stride=s,
        padding=p,
        dilation=d,
        ceil_mode=ceil_mode,
        count_include_pad=draw(st.booleans()),
        divisor_override=divisor,
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@st.composite
def adaptive_cases(draw) -> tuple[tuple[int, ...], str, tuple[int, int], int]:
    """(input shape, layout, output size, seed) for adaptive average pooling."""
    h, w = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    layout = draw(st.sampled_from(LAYOUTS))
    batch = 1 if layout == "unbatched" else draw(st.sampled_from([0, 1, 2]))
    out = (draw(st.integers(1, h + 3)), draw(st.integers(1, w + 3)))
    return (batch, draw(st.integers(1, 9)), h, w), layout, out, draw(st.integers(0, 2**31 - 1))



# Where torch's own channels-last CUDA pooling kernels disagree with its N,C,H,W and CPU kernels, the
# reference runs in N,C,H,W and is laid out as torch's channels-last output would be: average pooling's
# backward with padding (wrong gradients, pytorch/pytorch#188344, seen in torch 2.11), and max
# pooling over a window of only -inf (another index than the window's first element, which the other
# kernels and fastdl give).
def cuda_channels_last(x) -> bool:
    return x.is_cuda and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def as_channels_last(t):
    return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=torch.channels_last).copy_(t)


def torch_max_pool2d(x, **args):
    """F.max_pool2d(x, return_indices=True, **args), with the reference's layout rule above."""
    if not cuda_channels_last(x):
        return F.max_pool2d(x, return_indices=True, **args)
    out, idx = F.max_pool2d(x.contiguous(), return_indices=True, **args)
    return as_channels_last(out), as_channels_last(idx)


def torch_max_pool2d_backward(grad, x, idx, *args):
    """aten.max_pool2d_with_indices_backward(grad, x, kernel, stride, padding, dilation, ceil_mode, idx)."""
    backward = torch.ops.aten.max_pool2d_with_indices_backward
    if not cuda_channels_last(x):
        return backward(grad, x, *args, idx)
    return as_channels_last(backward(grad.contiguous(), x.contiguous(), *args, idx.contiguous()))


def torch_avg_pool2d_backward(grad, x, *args):
    """aten.avg_pool2d_backward(grad, x, kernel_size, stride, padding, ...), with the rule above."""
    if not cuda_channels_last(x):
        return torch.ops.aten.avg_pool2d_backward(grad, x, *args)
    return as_channels_last(torch.ops.aten.avg_pool2d_backward(grad.contiguous(), x.contiguous(), *args))
