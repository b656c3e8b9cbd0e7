"""Bad pooling calls: each gets an error naming the argument and what was expected, wherever PyTorch
rejects the same call; never a crash or silent garbage."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastdl

fd = torch.ops.fastdl

BAD_WINDOWS = [
    # (kwargs, what the message must mention)
    (dict(kernel_size=0), "kernel_size"),
    (dict(kernel_size=(2, -1)), "kernel_size"),
    (dict(kernel_size=2, stride=0), "stride"),
    (dict(kernel_size=2, stride=(1, -2)), "stride"),
    (dict(kernel_size=3, padding=2), "padding"),
    (dict(kernel_size=3, padding=-1), "padding"),
    (dict(kernel_size=12), "too small"),
    (dict(kernel_size=5, stride=1, padding=0, dilation=3), "too small"),
]


@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("kwargs,message", BAD_WINDOWS)
def test_bad_window_is_rejected_like_torch(op, kwargs, message):
    if op == "avg" and "dilation" in kwargs:
        pytest.skip("avg_pool2d has no dilation")
    x = torch.randn(1, 2, 10, 10)
    ours = fastdl.ops.max_pool2d if op == "max" else fastdl.ops.avg_pool2d
    theirs = F.max_pool2d if op == "max" else F.avg_pool2d
    with pytest.raises(RuntimeError):
        theirs(x, **kwargs)
    with pytest.raises(RuntimeError, match=message):
        ours(x, **kwargs)


@pytest.mark.parametrize("shape", [(10,), (4, 10), (1, 1, 2, 10, 10), (1, 0, 5, 5), (2, 3, 0, 5)])
@pytest.mark.parametrize("fn", [lambda x: fastdl.ops.max_pool2d(x, 2), lambda x: fastdl.ops.avg_pool2d(x, 2),
                                lambda x: fastdl.ops.adaptive_avg_pool2d(x, 2)])
def test_wrong_rank_or_empty_feature_dims(shape, fn):
    with pytest.raises((RuntimeError, ValueError), match="input"):
        fn(torch.randn(shape))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_inputs_are_rejected(dtype):
    x = torch.ones(1, 2, 6, 6, dtype=dtype)
    for fn in (lambda: fastdl.ops.max_pool2d(x, 2), lambda: fastdl.ops.avg_pool2d(x, 2),
               lambda: fastdl.ops.adaptive_avg_pool2d(x, 2)):
        with pytest.raises(RuntimeError, match="expected input to be float32 or float64"):
            fn()


def test_reduced_precision_on_cpu_names_the_supported_dtypes():
    with pytest.raises(RuntimeError, match="float32 or float64 on this device"):
        fastdl.ops.max_pool2d(torch.randn(1, 2, 6, 6, dtype=torch.bfloat16), 2)


def test_badly_formed_size_arguments():
    x = torch.randn(1, 2, 6, 6)
    with pytest.raises(ValueError, match="kernel_size"):
        fastdl.ops.max_pool2d(x, (2, 2, 2))
    with pytest.raises(ValueError, match="stride"):
        fastdl.ops.avg_pool2d(x, 2, stride=(1, 2, 3))
    with pytest.raises(ValueError, match=r"fastdl.max_pool2d: padding must be an int or a pair of ints, but got 0.5"):
        fastdl.ops.max_pool2d(x, 2, padding=0.5)
    # numpy's integers are ints to torch too.
    assert torch.equal(fastdl.ops.max_pool2d(x, np.int64(2)), F.max_pool2d(x, 2))
    assert torch.equal(fastdl.ops.avg_pool2d(x, 2, np.int64(1)), F.avg_pool2d(x, 2, 1))
    with pytest.raises(RuntimeError, match="kernel_size"):
        fd.max_pool2d(x, [2, 2, 2])
    with pytest.raises(ValueError, match="output_size"):
        fastdl.ops.adaptive_avg_pool2d(x, (1, 2, 3))
    with pytest.raises(RuntimeError, match="output_size"):
        fastdl.ops.adaptive_avg_pool2d(x, (-1, 2))


def test_divisor_override_zero():
    with pytest.raises(RuntimeError):
        F.avg_pool2d(torch.randn(1, 1, 4, 4), 2, divisor_override=0)
    with pytest.raises(RuntimeError, match="divisor_override"):
        fastdl.ops.avg_pool2d(torch.randn(1, 1, 4, 4), 2, divisor_override=0)


def test_backward_ops_check_grad_output_and_indices():
    x = torch.randn(2, 3, 8, 8)
    args = ([2, 2], [2, 2], [0, 0], [1, 1], False)
    out, idx = fd.max_pool2d_with_indices(x, *args)
    with pytest.raises(RuntimeError, match="grad_output of shape"):
        fd.max_pool2d_backward(torch.randn(2, 3, 5, 4), x, idx, *args)
    with pytest.raises(RuntimeError, match="grad_output to have the dtype"):
        fd.max_pool2d_backward(out.double(), x, idx, *args)
    with pytest.raises(RuntimeError, match="indices to be int64"):
        fd.max_pool2d_backward(out, x, idx.int(), *args)
    with pytest.raises(RuntimeError, match="indices of shape"):
        fd.max_pool2d_backward(out, x, idx[:1], *args)
    with pytest.raises(RuntimeError, match="grad_output of shape"):
        fd.avg_pool2d_backward(torch.randn(2, 3, 3, 3), x, [2, 2], [2, 2], [0, 0], False, True, None)
    with pytest.raises(RuntimeError, match="grad_output of shape"):
        fd.adaptive_avg_pool2d_backward(torch.randn(2, 4, 3, 3), x)


def test_garbage_indices_never_write_outside_the_gradient():
    x = torch.randn(2, 3, 8, 8)
    out, idx = fd.max_pool2d_with_indices(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    bad = torch.full_like(idx, 10**9)
    bad[0, 0, 0, 0] = -5
    grad = fd.max_pool2d_backward(torch.ones_like(out), x, bad, [2, 2], [2, 2], [0, 0], [1, 1], False)
    assert torch.equal(grad, torch.zeros_like(x))


@pytest.mark.cuda
def test_tensors_on_different_devices():
    x = torch.randn(2, 3, 8, 8, device="cuda")
    out, idx = fd.max_pool2d_with_indices(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="same device"):
        fd.max_pool2d_backward(out, x, idx.cpu(), [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="same device"):
        fd.max_pool2d_backward(out.cpu(), x, idx, [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="same device"):
        fd.avg_pool2d_backward(torch.randn(2, 3, 4, 4), x, [2, 2], [2, 2], [0, 0], False, True, None)
