"""Convolution cases and reference helpers shared by the CUDA tests and their host emulation."""

import random

import torch
import torch.nn.functional as F

from conftest import tolerance

# (N, C, H, W, K, (R, S), stride, padding, dilation, groups)
CASES = [
    (2, 16, 14, 14, 32, (1, 1), 1, 0, 1, 1),  # 1x1
    (3, 8, 13, 17, 24, (3, 3), 1, 1, 1, 1),  # 3x3, odd H and W, batch 3
    (1, 6, 20, 20, 10, (5, 5), 1, 2, 1, 1),  # 5x5, batch 1
    (2, 3, 33, 31, 16, (7, 7), 2, 3, 1, 1),  # 7x7/2 pad 3 (ResNet stem)
    (1, 3, 67, 67, 24, (11, 11), 4, 2, 1, 1),  # 11x11/4 pad 2 (AlexNet conv1)
    (2, 8, 16, 15, 12, (1, 7), 1, (0, 3), 1, 1),  # 1x7
    (2, 5, 13, 17, 7, (3, 2), (2, 3), (1, 0), 1, 1),  # 3x2, strides 2 and 3
    (2, 8, 15, 15, 16, (3, 3), 3, 1, 1, 1),  # stride 3
    (2, 4, 10, 12, 6, (3, 3), 1, 3, 1, 1),  # padding larger than kernel/2
    (2, 8, 17, 19, 8, (3, 3), 1, 2, 2, 1),  # dilation 2
    (2, 8, 16, 16, 12, (3, 3), 2, 1, (2, 1), 2),  # groups 2, stride 2, mixed dilation
    (2, 16, 14, 14, 16, (3, 3), 1, 1, 1, 16),  # depthwise
    (2, 12, 15, 13, 24, (5, 5), 2, 2, 1, 12),  # depthwise, 2 outputs per channel, 5x5/2
    (2, 20, 9, 9, 70, (3, 3), 1, 1, 1, 1),  # K = 70: two column tiles, the second almost empty
    (2, 24, 9, 9, 150, (3, 3), 1, 1, 1, 3),  # 50 output channels per group
    (1, 300, 7, 7, 40, (1, 1), 1, 0, 1, 1),  # long reduction: many slices
    (4, 32, 28, 28, 64, (3, 3), 1, 1, 1, 1),  # several row tiles and grad_weight splits
]


def seeded_cases(count=16, seed=0):
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        groups = rng.choice([1, 1, 2, 4])
        cg, kg = rng.randint(1, 9), rng.randint(1, 20)
        kernel = (rng.randint(1, 5), rng.randint(1, 5))
        stride = (rng.randint(1, 3), rng.randint(1, 3))
        padding = (rng.randint(0, 3), rng.randint(0, 3))
        dilation = (rng.randint(1, 3), rng.randint(1, 2))
        size = (rng.randint(5, 24), rng.randint(5, 24))
        if any(size[i] + 2 * padding[i] < dilation[i] * (kernel[i] - 1) + 1 for i in range(2)):
            continue  # the dilated kernel must fit the padded input
        h, w = size
        cases.append((rng.randint(1, 3), cg * groups, h, w, kg * groups, kernel, stride, padding, dilation, groups))
    return cases


GRID = CASES + seeded_cases()


def case_id(case):
    n, c, h, w, k, (r, s), stride, padding, dilation, groups = case
    return f"{n}x{c}x{h}x{w}-k{k}-{r}x{s}-s{stride}-p{padding}-d{dilation}-g{groups}".replace(" ", "")


def pair(v):
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def make_inputs(case, dtype, device, bias=True, input_format=torch.contiguous_format,
                weight_format=torch.contiguous_format, seed=0):
    """input, weight, bias and the op's (stride, padding, dilation, groups) for a case."""
    n, c, h, w, k, (r, s), stride, padding, dilation, groups = case
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, c, h, w, device=device, generator=gen).to(dtype).contiguous(memory_format=input_format)
    weight = torch.randn(k, c // groups, r, s, device=device, generator=gen).to(dtype)
    weight = weight.contiguous(memory_format=weight_format)
    b = torch.randn(k, device=device, generator=gen).to(dtype) if bias else None
    return x, weight, b, (pair(stride), pair(padding), pair(dilation), groups)


def cuda_output_format(dtype, input_format):
    """The layout of a CUDA convolution's output and input gradient: the input's (or channels_last for a
    channels_last weight), except float64, which stays N,C,H,W as torch's cuDNN path keeps it."""
    return torch.contiguous_format if dtype == torch.float64 else input_format


def torch_reference(x, w, b, args, grad_out):
    """Output and (grad_input, grad_weight, grad_bias) from F.conv2d and autograd; a missing bias is
    a zero bias, whose gradient is still the per-channel sum of grad_out."""
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    br = b.detach().clone() if b is not None else torch.zeros(w.shape[0], device=x.device, dtype=x.dtype)
    br.requires_grad_()
    y = F.conv2d(xr, wr, br if b is not None else None, *args)
    y = y if b is not None else y + br.view(-1, 1, 1)
    return (y.detach(), *torch.autograd.grad(y, (xr, wr, br), grad_out))


def assert_matches(mine, theirs, dtype):
    """Compare on values scaled to unit size: sums of many products round differently in another order."""
    assert mine.shape == theirs.shape and mine.dtype == theirs.dtype
    scale = theirs.abs().max().clamp_min(1e-30)
    torch.testing.assert_close(mine / scale, theirs / scale, **tolerance("conv2d", dtype))
