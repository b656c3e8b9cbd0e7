"""pytest-benchmark suite for batch normalization: the fastdl.bench cases (the batch norm layers of
ResNet-50 and (N, C) features; train forward, train forward+backward, eval forward), fastdl and torch
grouped side by side per case.

    pytest bench/bench_batchnorm.py [--device cpu|cuda] [--full]
"""

import pytest
import torch

from conftest import bench_device
from fastdl.bench import cases


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        full = metafunc.config.getoption("--full")
        selected = cases.bn_cases(bench_device(metafunc.config), torch.float32, quick=not full,
                                  batches=cases.BN_BATCHES if full else (32,))
        metafunc.parametrize("case", selected, ids=[c.id for c in selected])


@pytest.mark.parametrize("impl", ["torch", "fastdl"])
def test_batch_norm(benchmark, run_step, case, impl):
    benchmark.group = case.id
    step = case.make_step(impl, case.make_inputs())
    benchmark(run_step(step, case.device))
