"""fastdl's ops under torch.autocast, as torch's: on CUDA the convolutions and the LSTM/GRU layers cast
their floating inputs to the autocast dtype (csrc/cuda/autocast.cpp), batch normalization and pooling
run in the dtype they are given, float64 stays float64; on the CPU every op stays in its input's dtype
(tests/test_rnn.py checks the layers; here the convolution).

The dtype tests run without a GPU: fake CUDA tensors (shapes and dtypes only) reach the autocast
kernels through the dispatcher as real ones do, with autocast switched on directly (torch.autocast
turns itself off where no GPU is present). The tests marked cuda compare values and gradients with
torch's layers under torch.autocast on a GPU."""

import contextlib
import copy

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

import fastdl
from conftest import REDUCED_PRECISION_FACTOR

needs_cuda_build = pytest.mark.skipif(not fastdl.cuda_enabled(), reason="fastdl built without CUDA kernels")
REDUCED = [torch.float16, torch.bfloat16]


@contextlib.contextmanager
def cuda_autocast(dtype):
    """torch.autocast("cuda", dtype) without its check for a GPU."""
    enabled, saved = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    try:
        yield
    finally:
        torch.set_autocast_enabled("cuda", enabled)
        torch.set_autocast_dtype("cuda", saved)
        torch.clear_autocast_cache()


@pytest.fixture
def fake_cuda():
    """A function making fake CUDA tensors, inside a FakeTensorMode."""
    mode = FakeTensorMode()

    def make(*shape, dtype=torch.float32, requires_grad=False):
        t = FakeTensor(mode, torch.empty(*shape, dtype=dtype, device="meta"), torch.device("cuda"))
        return t.requires_grad_(requires_grad)

    with mode:
        yield make


@needs_cuda_build
@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("algorithm", ["direct", "winograd2", "winograd4", "auto"])
def test_cuda_convolution_runs_in_the_autocast_dtype(fake_cuda, algorithm, dtype):
    x, w, b = fake_cuda(2, 8, 16, 16), fake_cuda(16, 8, 3, 3, requires_grad=True), fake_cuda(16, requires_grad=True)
    with cuda_autocast(dtype):
        assert fastdl.ops.conv2d(x, w, b, padding=1, algorithm=algorithm).dtype == dtype
        assert fastdl.ops.conv2d(x.to(dtype), w, b, padding=1, algorithm=algorithm).dtype == dtype
        x64, w64 = fake_cuda(2, 8, 16, 16, dtype=torch.float64), fake_cuda(16, 8, 3, 3, dtype=torch.float64)
        assert fastdl.ops.conv2d(x64, w64, padding=1, algorithm=algorithm).dtype == torch.float64
    assert fastdl.ops.conv2d(x, w, b, padding=1, algorithm=algorithm).dtype == torch.float32


@needs_cuda_build
@pytest.mark.parametrize("dtype", REDUCED)
def test_cuda_recurrent_layers_and_cells_run_in_the_autocast_dtype(fake_cuda, dtype):
    x, h, c = fake_cuda(5, 2, 3), fake_cuda(1, 2, 4), fake_cuda(1, 2, 4)
    lstm = [fake_cuda(16, 3), fake_cuda(16, 4), fake_cuda(16), fake_cuda(16)]
    gru = [fake_cuda(12, 3), fake_cuda(12, 4), fake_cuda(12), fake_cuda(12)]
    with cuda_autocast(dtype):
        out, (hn, cn) = fastdl.ops.lstm(x, lstm, (h, c))
        results = [out, hn, cn, *fastdl.ops.gru(x, gru, h)]
        results += [*fastdl.ops.lstm_cell(x[0], (h[0], c[0]), *lstm), fastdl.ops.gru_cell(x[0], h[0], *gru)]
    assert [t.dtype for t in results] == [dtype] * len(results)
    out, (hn, cn) = fastdl.ops.lstm(x, lstm, (h, c))
    assert out.dtype == hn.dtype == cn.dtype == torch.float32


@needs_cuda_build
def test_cuda_batch_norm_and_pooling_keep_their_input_dtype(fake_cuda):
    x, stats = fake_cuda(2, 8, 6, 6), [fake_cuda(8) for _ in range(4)]
    with cuda_autocast(torch.float16):
        assert fastdl.ops.batch_norm(x, *stats, False, 0.1, 1e-5).dtype == torch.float32
        assert fastdl.ops.max_pool2d(x, 2).dtype == torch.float32
        assert fastdl.ops.avg_pool2d(x.half(), 2).dtype == torch.float16


def test_cpu_convolution_runs_in_the_given_dtype():
    # No CPU autocast kernel (fastdl has no bfloat16 CPU kernels): float32 in, float32 out, the values
    # of a call outside autocast.
    torch.manual_seed(0)
    conv = fastdl.nn.Conv2d(4, 8, 3, padding=1)
    x = torch.randn(2, 4, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = conv(x)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, conv(x), rtol=0, atol=0)


def rel_error(t, ref):
    return ((t.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300)).item()


# (torch layer, its input's shape): Conv2d with 32 channels runs the direct kernel, with 64 on 28x28
# maps Winograd (fastdl.ops.conv2d's CUDA heuristic); the recurrent layers stack and run backwards.
CUDA_CASES = {
    "conv-direct": (lambda: torch.nn.Conv2d(32, 48, 3, padding=1), (4, 32, 14, 14)),
    "conv-winograd": (lambda: torch.nn.Conv2d(64, 64, 3, padding=1), (8, 64, 28, 28)),
    "lstm": (lambda: torch.nn.LSTM(32, 64, num_layers=2, bidirectional=True), (10, 4, 32)),
    "gru": (lambda: torch.nn.GRU(32, 64, batch_first=True), (4, 10, 32)),
    "lstm-cell": (lambda: torch.nn.LSTMCell(32, 64), (4, 32)),
    "gru-cell": (lambda: torch.nn.GRUCell(32, 64), (4, 32)),
}


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("case", list(CUDA_CASES))
def test_cuda_layers_under_autocast_match_torchs(case, dtype):
    """fastdl's layer and torch's (same weights) under torch.autocast("cuda", dtype), against a float64
    copy without it: outputs in the autocast dtype, errors at most REDUCED_PRECISION_FACTOR times
    torch's, parameter gradients float32. torch's cuDNN RNNs may run in float16 under a bfloat16
    autocast (its AutocastRNN.cpp has cast to float16 whatever the dtype), fastdl's run in the autocast
    dtype: for bfloat16 recurrent layers the floor of the bound is four units of bfloat16's resolution."""
    make, shape = CUDA_CASES[case]
    torch.manual_seed(0)
    theirs = make().cuda()
    ours = fastdl.convert(theirs, inplace=False)
    reference = copy.deepcopy(theirs).double()
    x = torch.randn(shape, device="cuda")
    outs = []
    for module in (ours, theirs):
        with torch.autocast("cuda", dtype=dtype):
            out = torch.utils._pytree.tree_leaves(module(x))
        sum(o.float().sum() for o in out).backward()
        outs.append(out)
    exact = torch.utils._pytree.tree_leaves(reference(x.double()))
    sum(o.sum() for o in exact).backward()
    recurrent = not case.startswith("conv")
    floor = torch.finfo(dtype).eps * (4 if recurrent and dtype == torch.bfloat16 else 1)
    for got, want, ref in zip(*outs, exact, strict=True):
        assert got.dtype == dtype
        assert rel_error(got, ref) <= REDUCED_PRECISION_FACTOR * max(rel_error(want, ref), floor)
    for (name, p), q, r in zip(ours.named_parameters(), theirs.parameters(), reference.parameters(), strict=True):
        assert p.grad.dtype == torch.float32, name
        err, torch_err = rel_error(p.grad, r.grad), rel_error(q.grad, r.grad)
        assert err <= REDUCED_PRECISION_FACTOR * max(torch_err, floor), (name, err, torch_err)

