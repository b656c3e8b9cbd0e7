"""pytest-benchmark suite for LSTM and GRU layers: the fastdl.bench `rnn` cases (input 256, hidden 256
and 512, 1 and 2 layers, uni- and bidirectional, 50 and 200 steps; inference and training step),
fastdl and torch grouped side by side per case.

    pytest bench/bench_rnn.py [--device cpu|cuda] [--full]
"""

import pytest
import torch

from conftest import bench_device
from fastdl.bench.rnn_cases import rnn_cases


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        full = metafunc.config.getoption("--full")
        selected = rnn_cases(bench_device(metafunc.config), torch.float32, quick=not full)
        metafunc.parametrize("case", selected, ids=[c.id for c in selected])


@pytest.mark.parametrize("impl", ["torch", "fastdl"])
def test_rnn(benchmark, run_step, case, impl):
    benchmark.group = case.id
    step = case.make_step(impl, case.make_inputs())
    benchmark(run_step(step, case.device))
