"""pytest-benchmark suite for Winograd convolution: the fastdl.bench `winograd` cases (every 3x3
stride-1 convolution of VGG-16 and ResNet-50; forward and forward+backward; fastdl's direct,
winograd2 and winograd4 algorithms each against torch, on the GPU against cuDNN with TF32 off and on),
fastdl and torch grouped side by side per case.

    pytest bench/bench_winograd.py [--device cpu|cuda] [--full]
"""

import pytest
from conftest import benchmark_case, parametrize_family


def pytest_generate_tests(metafunc):
    parametrize_family(metafunc, "winograd")


@pytest.mark.parametrize("impl", ["torch", "fastdl"])
def test_winograd(benchmark, case, impl):
    benchmark_case(benchmark, case, impl)
