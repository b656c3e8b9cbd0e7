"""pytest-benchmark suite for Winograd convolution: the fastdl.bench `winograd` cases (every 3x3
stride-1 convolution of VGG-16 and ResNet-50; forward and forward+backward; fastdl's direct,
winograd2 and winograd4 algorithms each against torch, on the GPU against cuDNN with TF32 off and on),
fastdl and torch grouped side by side per case.

    pytest bench/bench_winograd.py [--device cpu|cuda] [--full]
"""

import pytest
import torch

from conftest import bench_device
from fastdl.bench import cases


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        full = metafunc.config.getoption("--full")
        selected = cases.winograd_cases(bench_device(metafunc.config), torch.float32, quick=not full)
        metafunc.parametrize("case", selected, ids=[c.id for c in selected])


@pytest.mark.parametrize("impl", ["torch", "fastdl"])
def test_winograd(benchmark, run_step, case, impl):
    benchmark.group = case.id
    step = case.make_step(impl, case.make_inputs())
    benchmark(run_step(step, case.device))
