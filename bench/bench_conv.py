"""pytest-benchmark suite for 2-D convolution: the fastdl.bench cases (the distinct convolutions of
LeNet-5, AlexNet, VGG-16 and ResNet-50; forward and forward+backward; on the GPU against cuDNN with
TF32 off and on), fastdl and torch grouped side by side per case.

    pytest bench/bench_conv.py [--device cpu|cuda] [--full]
"""

import pytest
from conftest import benchmark_case, parametrize_family


def pytest_generate_tests(metafunc):
    parametrize_family(metafunc, "conv")


@pytest.mark.parametrize("impl", ["torch", "fastdl"])
def test_conv(benchmark, case, impl):
    benchmark_case(benchmark, case, impl)
