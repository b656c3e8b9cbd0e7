"""pytest-benchmark suite for whole reference models: the fastdl.bench `models` cases (fastdl.models'
networks converted against stock with shared weights; an inference step and a training step),
fastdl and torch grouped side by side per case.

    pytest bench/bench_models.py [--device cpu|cuda] [--full]
"""

import pytest
from conftest import benchmark_case, parametrize_family


def pytest_generate_tests(metafunc):
    parametrize_family(metafunc, "models")


@pytest.mark.parametrize("impl", ["torch", "fastdl"])
def test_models(benchmark, case, impl):
    benchmark_case(benchmark, case, impl)
