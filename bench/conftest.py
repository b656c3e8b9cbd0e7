"""Options of the pytest-benchmark suites (bench/bench_*.py): which device, and all cases or a
quick subset. The cases themselves come from fastdl.bench.cases, shared with python -m fastdl.bench."""

import pytest
import torch

import fastdl


def pytest_addoption(parser):
    parser.addoption("--device", choices=["cpu", "cuda"], default=None,
                     help="default: cuda when a GPU is visible and fastdl was built with CUDA, else cpu")
    parser.addoption("--full", action="store_true", help="every layer and batch size (default: a quick subset)")


def bench_device(config) -> str:
    device = config.getoption("--device")
    if device is None:
        device = "cuda" if torch.cuda.is_available() and fastdl.cuda_enabled() else "cpu"
    return device


@pytest.fixture
def run_step():
    """Wraps a step so a benchmark times its completion (CUDA work is asynchronous)."""
    def wrap(step, device):
        if device != "cuda":
            return step
        def synchronized():
            step()
            torch.cuda.synchronize()
        return synchronized
    return wrap
