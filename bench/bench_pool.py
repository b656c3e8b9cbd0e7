"""pytest-benchmark suite for pooling: the fastdl.bench cases (pooling layers of AlexNet, VGG-16 and
ResNet-50, forward and forward+backward), fastdl and torch grouped side by side per case.

    pytest bench/bench_pool.py [--device cpu|cuda] [--full]

The runner `python -m fastdl.bench` measures the same cases with interleaved samples and reports
speedups; this suite gives pytest-benchmark's statistics and comparisons between saved runs.
"""

import pytest
from conftest import benchmark_case, parametrize_family


def pytest_generate_tests(metafunc):
    parametrize_family(metafunc, "pool")


@pytest.mark.parametrize("impl", ["torch", "fastdl"])
def test_pool(benchmark, case, impl):
    benchmark_case(benchmark, case, impl)
