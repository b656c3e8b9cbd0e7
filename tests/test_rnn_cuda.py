"""CUDA-only LSTM/GRU checks: float16/bfloat16 layers (outputs, final states and gradients at most
twice PyTorch's error against a float64 reference), batches large enough for many blocks per step,
work on the current stream, and the two directions of bidirectional layers on two streams (the same
results as one after the other; ordered after the caller's stream). Float32/float64 CUDA values and
gradients are covered by the device-parametrized tests in test_rnn.py."""

import copy

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


def run_layers(module, x, lengths):
    """Output, final states and every gradient of an LSTM/GRU module (packed when lengths given)."""
    module.zero_grad()
    x = x.detach().clone().requires_grad_()
    inp = x if lengths is None else torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, states = module(inp)
    data = out if lengths is None else out.data
    (data.square().sum() + sum(s.sum() for s in flat(states))).backward()
    return [data.detach(), *(s.detach() for s in flat(states)), x.grad, *(p.grad.clone() for p in module.parameters())]


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("packed", [False, True])
def test_bidirectional_directions_on_two_streams_equal_one_stream(kind, packed, monkeypatch):
    """The two directions run concurrently (fastdl/ops/rnn.py, _on_two_streams), forward and backward;
    the results are those of running them one after the other."""
    import fastdl.ops.rnn as rnn_ops

    torch.manual_seed(0)
    ours = getattr(fastdl.nn, kind)(24, 96, num_layers=2, bidirectional=True).cuda()
    x = torch.randn(40, 6, 24, device="cuda")
    lengths = torch.tensor([40, 13, 27, 1, 40, 8]) if packed else None
    rnn_ops._SIDE_STREAMS.clear()
    concurrent = run_layers(ours, x, lengths)
    assert torch.cuda.current_device() in rnn_ops._SIDE_STREAMS  # the side stream was used
    monkeypatch.setattr(rnn_ops, "_concurrent_directions", lambda x: False)
    serial = run_layers(ours, x, lengths)
    for a, b in zip(concurrent, serial, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_bidirectional_layer_waits_for_its_input_on_the_callers_stream(kind):
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(16, 64, bidirectional=True).cuda()
    ours = getattr(fastdl.nn, kind)(16, 64, bidirectional=True).cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(30, 8, 16, device="cuda")
    caller = torch.cuda.Stream()
    caller.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(caller):
        # The input is made on the caller's stream after a delay: a direction that ran on a stream not
        # ordered after it would read it before it exists.
        torch.cuda._sleep(50_000_000)
        x2 = x * 2
        out, _ = ours(x2)
        out = out * 1  # used on the caller's stream right after the layer
    torch.cuda.current_stream().wait_stream(caller)
    torch.testing.assert_close(out, ref(x * 2)[0], rtol=1e-4, atol=1e-5)


def assert_small_batch_kernel_equals_cublas_path(module, x, lengths, monkeypatch, **tolerance):
    """run_layers with the small-batch kernel (FASTDL_RNN_SMALL_BATCH=always) and without (=never)."""
    results = {}
    for mode in ("always", "never"):
        monkeypatch.setenv("FASTDL_RNN_SMALL_BATCH", mode)
        results[mode] = run_layers(module, x, lengths)
    for a, b in zip(results["always"], results["never"], strict=True):
        torch.testing.assert_close(a, b, **tolerance)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("batch", [1, 8, 16, 32, 64])
def test_small_batch_steps_equal_the_cublas_path(kind, batch, monkeypatch):
    """The small-batch kernel runs every step of a layer in one persistent launch
    (csrc/cuda/rnn_small_batch.cu; shipped up to batch 16, FASTDL_RNN_SMALL_BATCH=always up to 64);
    =never takes the cuBLAS product and the cell kernel per step instead: the same outputs and
    gradients, packed too."""
    torch.manual_seed(0)
    ours = getattr(fastdl.nn, kind)(24, 40, num_layers=2).cuda()
    x = torch.randn(9, batch, 24, device="cuda")
    lengths = torch.randint(1, 10, (batch,))
    lengths[0] = 9
    for packed in (None, lengths):
        assert_small_batch_kernel_equals_cublas_path(ours, x, packed, monkeypatch, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize(("hidden", "batch"), [(1024, 8), (2048, 8), (1024, 32)])
def test_small_batch_steps_with_several_units_per_block(kind, hidden, batch, monkeypatch):
    """Hidden sizes past the device's resident blocks at one unit per block (about 6 blocks of 256
    threads per SM at the kernel's registers: some 800 on an H100) run 2 or 4 hidden units per block
    (rnn_small_batch.cu, units_per_block; at most 2 at batch 17-32), which hidden 40 never reaches."""
    torch.manual_seed(0)
    ours = getattr(fastdl.nn, kind)(16, hidden).cuda()
    x = torch.randn(3, batch, 16, device="cuda")
    assert_small_batch_kernel_equals_cublas_path(ours, x, None, monkeypatch, rtol=1e-4, atol=1e-5)


def test_small_batch_steps_too_wide_for_one_resident_grid(monkeypatch):
    """Hidden 4608 needs 1152 blocks of 256 threads even at 4 units per block, more than an H100 holds
    at once (132 SMs x 8): the small-batch kernel then launches per step, with the same results."""
    torch.manual_seed(0)
    ours = fastdl.nn.LSTM(16, 4608).cuda()
    x = torch.randn(3, 2, 16, device="cuda")
    assert_small_batch_kernel_equals_cublas_path(ours, x, None, monkeypatch, rtol=1e-4, atol=1e-4)


class FirstOutput(torch.nn.Module):
    """An RNN module's output alone (make_graphed_callables takes tensors out)."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_small_batch_steps_in_a_cuda_graph(kind):
    """Captured in a CUDA graph (forward and backward, torch.cuda.make_graphed_callables), the small-batch
    kernel launches per step with its arguments by value (cuda/rnn.cpp, run_recorded): replays with new
    inputs equal eager calls."""
    torch.manual_seed(0)
    eager = FirstOutput(getattr(fastdl.nn, kind)(24, 40).cuda())
    module = copy.deepcopy(eager)
    x = torch.randn(9, 4, 24, device="cuda", requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(module, (x,))
    for scale in (2.0, -0.5):
        results = []
        for m, net in ((graphed, module), (eager, eager)):
            net.zero_grad()
            xs = (x.detach() * scale).requires_grad_()
            out = m(xs)
            out.square().sum().backward()
            results.append([out.detach(), xs.grad, *(p.grad for p in net.parameters())])
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
