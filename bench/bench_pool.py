"""pytest-benchmark suite for pooling: the fastdl.bench cases (pooling layers of AlexNet, VGG-16 and
ResNet-50, forward and forward+backward), fastdl and torch grouped side by side per case.

    pytest bench/bench_pool.py [--device cpu|cuda] [--full]

The runner `python -m fastdl.bench` measures the same cases with interleaved samples and reports
speedups; this suite gives pytest-benchmark's statistics and comparisons between saved runs.
"""

import pytest
import torch

from conftest import bench_device
from fastdl.bench import cases


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        full = metafunc.config.getoption("--full")
        selected = cases.pool_cases(bench_device(metafunc.config), torch.float32, quick=not full,
                                    batches=cases.POOL_BATCHES if full else (1, 32))
        metafunc.parametrize("case", selected, ids=[c.id for c in selected])


@pytest.mark.parametrize("impl", ["torch", "fastdl"])
def test_pool(benchmark, run_step, case, impl):
    benchmark.group = case.id
    step = case.make_step(impl, case.make_inputs())
    benchmark(run_step(step, case.device))
