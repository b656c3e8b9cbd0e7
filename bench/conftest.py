"""What the pytest-benchmark suites (bench/bench_*.py) share: their options (device, all cases or the
quick subset), the parametrization by a fastdl.bench family's cases (the same cases and quick subsets
as python -m fastdl.bench), and the benchmark of one case on one side."""

import pytest
import torch

import fastdl
from fastdl.bench.case import true_float32
from fastdl.bench.cases import FAMILIES


def pytest_addoption(parser):
    parser.addoption("--device", choices=["cpu", "cuda"], default=None,
                     help="default: cuda when a GPU is visible and fastdl was built with CUDA, else cpu")
    parser.addoption("--full", action="store_true", help="every layer and batch size (default: a quick subset)")


def bench_device(config) -> str:
    device = config.getoption("--device")
    if device is None:
        device = "cuda" if torch.cuda.is_available() and fastdl.cuda_enabled() else "cpu"
    return device


def parametrize_family(metafunc, family: str) -> None:
    """Parametrizes `case` with the family's float32 cases: the quick subset, or all with --full."""
    if "case" in metafunc.fixturenames:
        quick = not metafunc.config.getoption("--full")
        selected = FAMILIES[family](bench_device(metafunc.config), torch.float32, quick=quick)
        metafunc.parametrize("case", selected, ids=[c.id for c in selected])


def benchmark_case(benchmark, case, impl: str) -> None:
    """Times one side of a case, grouped with the other side; on CUDA until its work completes."""
    benchmark.group = case.id
    true_float32()
    step = case.make_step(impl, case.make_inputs())
    if case.device == "cuda":
        def synchronized():
            step()
            torch.cuda.synchronize()
        benchmark(synchronized)
    else:
        benchmark(step)
