"""pytest-benchmark suite for 2-D convolution: the fastdl.bench cases (the distinct convolutions of
LeNet-5, AlexNet, VGG-16 and ResNet-50; forward and forward+backward; on the GPU against cuDNN with
TF32 off and on), fastdl and torch grouped side by side per case.

    pytest bench/bench_conv.py [--device cpu|cuda] [--full]
"""

import pytest
import torch

from conftest import bench_device
from fastdl.bench import cases


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        full = metafunc.config.getoption("--full")
        selected = cases.conv_cases(bench_device(metafunc.config), torch.float32, quick=not full)
        metafunc.parametrize("case", selected, ids=[c.id for c in selected])


@pytest.mark.parametrize("impl", ["torch", "fastdl"])
def test_conv(benchmark, run_step, case, impl):
    benchmark.group = case.id
    step = case.make_step(impl, case.make_inputs())
    benchmark(run_step(step, case.device))
