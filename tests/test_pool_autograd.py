"""Pooling ops as PyTorch ops: gradcheck in float64, torch.library.opcheck (schema, fake kernel,
autograd registration, AOT dispatch) and torch.compile(fullgraph=True); double backward in
tests/test_double_backward.py."""

import pytest
import torch
import torch.nn.functional as F

import fastdl

DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)]
fd = torch.ops.fastdl


def distinct(shape, device, seed=0) -> torch.Tensor:
    """Float64 values far apart, so that a gradcheck step cannot change which element is a maximum."""
    g = torch.Generator().manual_seed(seed)
    n = torch.Size(shape).numel()
    return (torch.randperm(n, generator=g).double() / n).reshape(shape).to(device)


MAX_CONFIGS = [
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=2),
    dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1), ceil_mode=True),
]
AVG_CONFIGS = [
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, count_include_pad=False, ceil_mode=True),
    dict(kernel_size=(2, 3), stride=1, divisor_override=5),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("config", MAX_CONFIGS)
def test_max_pool2d_gradcheck(config, channels_last, device):
    x = distinct((2, 3, 7, 6), device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fastdl.ops.max_pool2d(t, **config), (x,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("config", AVG_CONFIGS)
def test_avg_pool2d_gradcheck(config, channels_last, device):
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fastdl.ops.avg_pool2d(t, **config), (x,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("output_size", [1, (3, 4), (9, 5)])
def test_adaptive_avg_pool2d_gradcheck(output_size, device):
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fastdl.ops.adaptive_avg_pool2d(t, output_size), (x,))


def opcheck_cases(device):
    x = torch.randn(2, 3, 9, 8, device=device)
    xl = x.contiguous(memory_format=torch.channels_last)
    x3 = torch.randn(3, 9, 8, device=device)
    cases = []
    for inp in (x, xl, x3):
        leaf = inp.detach().clone().requires_grad_()
        args = ([3, 3], [2, 2], [1, 1], [1, 1], False)
        out, idx = fd.max_pool2d_with_indices(inp, *args)
        g = torch.randn_like(out)
        cases += [
            (fd.max_pool2d.default, (leaf, *args)),
            (fd.max_pool2d_with_indices.default, (leaf, *args)),
            (fd.max_pool2d_backward.default, (g, inp, idx, *args)),
            (fd.avg_pool2d.default, (leaf, [3, 2], [2, 1], [1, 0], True, False, None)),
            (fd.avg_pool2d_backward.default,
             (torch.randn_like(fd.avg_pool2d(inp, [3, 2], [2, 1], [1, 0], True, False, None)), inp,
              [3, 2], [2, 1], [1, 0], True, False, None)),
            (fd.adaptive_avg_pool2d.default, (leaf, [4, 3])),
            (fd.adaptive_avg_pool2d_backward.default,
             (torch.randn_like(fd.adaptive_avg_pool2d(inp, [4, 3])), inp)),
        ]
    return cases


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_pooling_op(device):
    for op, args in opcheck_cases(device):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_matches_eager(device):
    def net(x):
        y = fastdl.ops.max_pool2d(x, 3, 2, 1)
        y = fastdl.ops.avg_pool2d(y, 2, 1, ceil_mode=True)
        return fastdl.ops.adaptive_avg_pool2d(torch.relu(y), 2).sum(dim=(-1, -2))

    torch._dynamo.reset()
    compiled = torch.compile(net, fullgraph=True)
    x = torch.randn(2, 4, 17, 15, device=device)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_eager, out_compiled = net(a), compiled(b)
    torch.testing.assert_close(out_compiled, out_eager)
    g = torch.randn_like(out_eager)
    out_eager.backward(g)
    out_compiled.backward(g)
    torch.testing.assert_close(b.grad, a.grad)


def test_first_order_gradient_with_create_graph_still_works():
    # create_graph=True alone (e.g. for a penalty elsewhere in the model) must not trip the error.
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(fastdl.ops.max_pool2d(x, 2).sum(), x, create_graph=True)
    (ref,) = torch.autograd.grad(F.max_pool2d(x, 2).sum(), x)
    torch.testing.assert_close(grad, ref)


def test_torch_export_of_a_converted_model():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.MaxPool2d(2), torch.nn.AvgPool2d(2),
                                torch.nn.AdaptiveAvgPool2d(1))
    fastdl.convert(model)
    # A symbolic batch size exercises the fake kernels' shape math on SymInts.
    batch = torch.export.Dim("batch", min=1)
    exported = torch.export.export(model, (torch.randn(2, 3, 18, 18),), dynamic_shapes=({0: batch},))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert {"fastdl.max_pool2d_with_indices.default", "fastdl.avg_pool2d.default",
            "fastdl.adaptive_avg_pool2d.default"} <= targets
    x = torch.randn(3, 3, 18, 18)
    torch.testing.assert_close(exported.module()(x), model(x))
