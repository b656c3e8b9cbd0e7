"""CUDA-only LSTM/GRU checks: float16/bfloat16 layers (outputs, final states and gradients at most
twice PyTorch's error against a float64 reference), batches large enough for many blocks per step,
and work on the current stream. Float32/float64 CUDA values and gradients are covered by the
device-parametrized tests in test_rnn.py."""

import pytest
import torch

import fastdl
from conftest import REDUCED_PRECISION_FACTOR

pytestmark = pytest.mark.cuda


def rel_error(t, ref):
    return ((t.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300)).item()


def flat(x):
    return list(x) if isinstance(x, tuple) else [x]


def forward_backward(module, x, hx):
    x = x.detach().clone().requires_grad_()
    out, states = module(x, hx)
    (out.float().square().sum() + sum(s.float().sum() for s in flat(states))).backward()
    return [out, *flat(states), x.grad, *(p.grad for p in module.parameters())]


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch,hidden,layers,bidir", [(64, 256, 1, False), (8, 128, 2, True), (300, 64, 1, False)])
def test_reduced_precision_within_twice_torchs_error(kind, dtype, batch, hidden, layers, bidir):
    torch.manual_seed(0)
    base = getattr(torch.nn, kind)(32, hidden, num_layers=layers, bidirectional=bidir).cuda()
    ref64 = getattr(torch.nn, kind)(32, hidden, num_layers=layers, bidirectional=bidir).cuda().double()
    theirs = getattr(torch.nn, kind)(32, hidden, num_layers=layers, bidirectional=bidir).cuda().to(dtype)
    ours = getattr(fastdl.nn, kind)(32, hidden, num_layers=layers, bidirectional=bidir).cuda().to(dtype)
    for m in (ref64, theirs, ours):
        m.load_state_dict(base.state_dict())
    x = torch.randn(20, batch, 32, device="cuda")
    expected = forward_backward(ref64, x.double(), None)
    got_theirs = forward_backward(theirs, x.to(dtype), None)
    got_ours = forward_backward(ours, x.to(dtype), None)
    floor = torch.finfo(dtype).eps
    for ref, t, o in zip(expected, got_theirs, got_ours, strict=True):
        assert o.dtype == dtype
        assert rel_error(o, ref) <= REDUCED_PRECISION_FACTOR * max(rel_error(t, ref), floor)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_runs_on_the_current_stream(kind):
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(16, 64).cuda()
    ours = getattr(fastdl.nn, kind)(16, 64).cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(30, 8, 16, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out, _ = ours(x)
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(out, ref(x)[0], rtol=1e-4, atol=1e-5)


def test_device_mismatch_names_the_argument():
    x, h0 = torch.randn(3, 2, 4, device="cuda"), torch.randn(2, 5)
    with pytest.raises(RuntimeError, match="expected h0 on the same device as input"):
        torch.ops.fastdl.gru_layer(x, h0, torch.randn(15, 4, device="cuda"), torch.randn(15, 5, device="cuda"),
                                   None, None, [], False, False)
