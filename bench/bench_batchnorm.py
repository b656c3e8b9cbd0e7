"""pytest-benchmark suite for batch normalization: the fastdl.bench cases (the batch norm layers of
ResNet-50 and (N, C) features; train forward, train forward+backward, eval forward), fastdl and torch
grouped side by side per case.

    pytest bench/bench_batchnorm.py [--device cpu|cuda] [--full]
"""

import pytest
from conftest import benchmark_case, parametrize_family


def pytest_generate_tests(metafunc):
    parametrize_family(metafunc, "bn")


@pytest.mark.parametrize("impl", ["torch", "fastdl"])
def test_batch_norm(benchmark, case, impl):
    benchmark_case(benchmark, case, impl)
