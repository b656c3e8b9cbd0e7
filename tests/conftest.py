"""Shared test settings: output poisoning, the tolerance table, devices and the cuda marker."""

import os

# Kernels' outputs (and the CPU kernels' scratch blocks) start as NaN (or -1 for indices) so an
# element a kernel forgets to write, or reads before writing, fails a comparison. Read by the
# extension on first use: set before fastdl runs anything.
os.environ["FASTDL_POISON_OUTPUTS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

import fastdl  # noqa: E402

HAS_CUDA = fastdl.cuda_enabled() and torch.cuda.is_available()

# Allowed difference from PyTorch's result in the same dtype, per op family and dtype:
# (rtol, atol) for torch.testing.assert_close. Max pooling selects an input element, so it must
# match exactly, indices included. Sums may round differently when added in another order.
TOLERANCES = {
    ("max_pool", torch.float64): (0.0, 0.0),
    ("max_pool", torch.float32): (0.0, 0.0),
    ("max_pool", torch.float16): (0.0, 0.0),
    ("max_pool", torch.bfloat16): (0.0, 0.0),
    ("avg_pool", torch.float64): (1e-12, 1e-12),
    ("avg_pool", torch.float32): (1e-5, 1e-6),
    # Batch norm accumulates in double on the CPU and in float on CUDA, torch does its own; the
    # weight gradient is a sum over the whole batch.
    ("batch_norm", torch.float64): (1e-10, 1e-10),
    ("batch_norm", torch.float32): (1e-4, 1e-5),
    # Convolution sums C/groups * R * S products per output (N * OH * OW per weight gradient) in
    # another order than torch: compare on values scaled to unit size (tests/test_conv2d.py).
    ("conv2d", torch.float64): (1e-10, 1e-10),
    ("conv2d", torch.float32): (1e-4, 1e-4),
    # LSTM/GRU: products summed in another order than torch's (fastdl's packed recurrent product on
    # the CPU), errors carried through the time steps; weight gradients sum over steps and sequences.
    ("rnn", torch.float64): (1e-10, 1e-10),
    ("rnn", torch.float32): (1e-4, 1e-5),
}

# float16 / bfloat16: a kernel's error against a float64 reference may be at most this multiple of
# PyTorch's own error in that dtype (plus one unit of the dtype's resolution near the values).
REDUCED_PRECISION_FACTOR = 2.0

# Whole models (tests/test_models.py) in float32: a result may differ from torch's by at most this
# fraction of its largest magnitude (rounding through many layers); where the network itself
# amplifies rounding beyond that (batch statistics over few values), fastdl's error against a
# float64 reference may be at most REDUCED_PRECISION_FACTOR times torch's own.
MODEL_FLOAT32_REL_MAX = 1e-4

# Winograd F(m x m, 3x3) in float32, by tile m: relative L2 error against a float64 reference at most
# this (issue 5). F(4x4,3x3) rounds more: G's 1/6, 1/12, 1/24 and the larger coefficients of B and A.
WINOGRAD_FLOAT32_REL_L2 = {2: 1e-6, 4: 5e-6}


@pytest.fixture(autouse=True)
def true_float32():
    """float32 means float32 in every test: PyTorch's cuDNN convolutions and RNNs would otherwise round
    the reference's operands to TF32 (about 1e-3 relative) on GPUs that have it."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(params=["staged", "fused"])
def winograd_kernel(request, monkeypatch):
    """The CUDA Winograd forward and input gradient through the staged kernels (transforms and a batched
    GEMM) or the fused one (csrc/cuda/winograd_fused.cu), chosen by FASTDL_WINOGRAD_FUSED."""
    monkeypatch.setenv("FASTDL_WINOGRAD_FUSED", "always" if request.param == "fused" else "never")
    return request.param


def tolerance(family: str, dtype: torch.dtype) -> dict:
    rtol, atol = TOLERANCES[(family, dtype)]
    return {"rtol": rtol, "atol": atol}


def devices() -> list[str]:
    return ["cpu", "cuda"] if HAS_CUDA else ["cpu"]


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU and fastdl built with CUDA")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


# A CUDA error such as an illegal address leaves the process's CUDA context unusable: every later
# test in the same process would fail with it. Under pytest-xdist (`-n N`), a worker that hits one
# ends itself, so that xdist reports the test that caused it and starts a clean worker.
STICKY_CUDA_ERRORS = ("illegal memory access", "misaligned address", "unspecified launch failure",
                      "device-side assert", "illegal instruction", "CUDA error: an illegal")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.excinfo is not None and os.environ.get("PYTEST_XDIST_WORKER"):
        message = str(call.excinfo.value)
        if any(text in message for text in STICKY_CUDA_ERRORS):
            print(f"\n{item.nodeid}: sticky CUDA error, ending this worker:\n{message[:2000]}", flush=True)
            os._exit(3)
