"""The CUDA small-batch LSTM/GRU step kernels' host emulation (csrc/cuda/rnn_small_batch.h) against
fastdl's CPU layer ops (which tests/test_rnn.py checks against torch.nn): forward (the recurrent
product split over threads, the cell, the two state buffers taking turns over odd and even step
counts, what the forward saves) and backward through time (each step's cell backward with the product
of the step processed before it, the last product after the loop), with rows that do not run at a step
(packed sequences, both directions), biases or none, and gradients of the output, the final states or
both. tests/test_rnn_cuda.py and test_rnn.py run the kernels themselves."""

import pytest
import torch

import fastdl

pytestmark = pytest.mark.skipif(not fastdl.cuda_enabled(), reason="CUDA kernels not built")

# (batch, hidden, steps, batch_sizes or None): batch 1 to 64 (the kernel's limit), hidden sizes that
# give each number of units a block owns (the emulation's device holds 16 blocks: 1 unit up to hidden
# 16, 2 up to 32, 4 up to 64 where the batch allows 4, i.e. up to 16 rows, then 1 again, as a launch per
# step), also where they do not divide the hidden size, odd and even step counts, packed batches.
CASES = [
    (1, 1, 1, None),
    (1, 5, 2, None),
    (3, 33, 7, None),
    (16, 8, 4, None),
    (5, 13, 6, [5, 5, 3, 3, 2, 1]),
    (16, 20, 3, [16, 9, 2]),
    (4, 64, 5, None),
    (2, 31, 3, None),
    (2, 70, 2, None),
    (32, 21, 3, None),
    (32, 40, 2, None),  # 4 units would fit the grid, but 32 rows allow 2: a launch per step
    (64, 11, 3, [64, 40, 7]),
]
INPUT = 6


def make(kind, case, dtype, bias, seed=0):
    batch, hidden, steps, sizes = case
    gates = 4 if kind == "lstm" else 3
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    x = rand(sum(sizes), INPUT) if sizes else rand(steps, batch, INPUT)
    states = [rand(batch, hidden) for _ in range(2 if kind == "lstm" else 1)]
    weights = [rand(gates * hidden, INPUT), rand(gates * hidden, hidden)]
    biases = [rand(gates * hidden), rand(gates * hidden)] if bias else [None, None]
    return x, states, weights, biases, sizes or []


def compare(names, got, want, exact, dtype):
    """float64 to 1e-12 of the CPU op; float32 (sums in another order than the CPU's) within twice the CPU
    op's own error against float64, plus 1e-6 of the largest value."""
    for name, a, b, e in zip(names, got, want, exact, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if a.numel() == 0:
            continue
        assert torch.isfinite(a).all(), name
        if dtype == torch.float64:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
        else:
            err, cpu_err = ((t.double() - e).abs().max().item() for t in (a, b))
            scale = e.abs().max().item()
            assert err <= 2 * cpu_err + 1e-6 * max(1.0, scale), (name, err, cpu_err, scale)


def as_double(args):
    return [a.double() if isinstance(a, torch.Tensor) else a for a in args]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_emulated_small_batch_step_matches_the_cpu_layer(kind, case, bias, reverse, dtype):
    x, states, weights, biases, sizes = make(kind, case, dtype, bias)
    args = (x, *states, *weights, *biases, *no_projection(kind), sizes, reverse, True)
    got = getattr(torch.ops.fastdl_cuda_emulation, kind + "_layer")(*args)
    want = getattr(torch.ops.fastdl, kind + "_layer")(*args)
    exact = getattr(torch.ops.fastdl, kind + "_layer")(*as_double(args))
    names = ["output", "h", "c", "gates", "cells", "hidden"] if kind == "lstm" else ["output", "h", "saved"]
    compare(names, got, want, exact, dtype)


def no_projection(kind):
    """The LSTM ops' weight_hr argument (None: no projections), nothing for the GRU's."""
    return [None] if kind == "lstm" else []


def test_emulation_takes_only_small_batches_and_no_projections():
    x, states, weights, biases, _ = make("gru", (65, 4, 2, None), torch.float32, True)
    with pytest.raises(RuntimeError, match="batch up to 64"):
        torch.ops.fastdl_cuda_emulation.gru_layer(x, *states, *weights, *biases, [], False, False)
    x, states, weights, biases, _ = make("lstm", (2, 4, 2, None), torch.float32, True)
    weights[1] = weights[1][:, :3]  # (4H, P) for proj_size P = 3
    with pytest.raises(RuntimeError, match="no LSTM with projections"):
        torch.ops.fastdl_cuda_emulation.lstm_layer(x, states[0][:, :3], states[1], *weights, *biases,
                                                   torch.randn(3, 4), [], False, False)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("grads", ["all", "output only", "final states only"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_emulated_small_batch_backward_matches_the_cpu_layer(kind, case, grads, reverse, dtype):
    """Backward through time, one launch per step (each step's cell backward with the product of the step
    processed before it) and the last product after the loop, against the CPU op on the same saved
    workspace."""
    x, states, weights, biases, sizes = make(kind, case, dtype, True)
    saved = getattr(torch.ops.fastdl, kind + "_layer")(x, *states, *weights, *biases, *no_projection(kind), sizes,
                                                       reverse, True)
    g = torch.Generator().manual_seed(7)
    rand = lambda like: torch.randn(like.shape, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    grad_out = rand(saved[0]) if grads != "final states only" else None
    grad_states = [rand(s) if grads != "output only" else None for s in states]
    workspace = [saved[0], *(saved[3:] if kind == "lstm" else saved[2:])]  # output, gates, cells, hidden / saved
    args = [grad_out, *grad_states, x, *states, *weights, *no_projection(kind), *workspace, sizes, reverse,
            [True, True, True]]
    got = getattr(torch.ops.fastdl_cuda_emulation, kind + "_layer_backward")(*args)
    want = getattr(torch.ops.fastdl, kind + "_layer_backward")(*args)
    exact = getattr(torch.ops.fastdl, kind + "_layer_backward")(*as_double(args))
    names = (["input", "h0", "c0", "weight_ih", "weight_hh", "weight_hr", "bias_ih", "bias_hh"] if kind == "lstm"
             else ["input", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"])
    compare(names, got, want, exact, dtype)
