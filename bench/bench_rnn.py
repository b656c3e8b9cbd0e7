"""pytest-benchmark suite for LSTM and GRU layers: the fastdl.bench `rnn` cases (input 256, hidden 256
and 512, 1 and 2 layers, uni- and bidirectional, 50 and 200 steps; inference and training step),
fastdl and torch grouped side by side per case.

    pytest bench/bench_rnn.py [--device cpu|cuda] [--full]
"""

import pytest
from conftest import benchmark_case, parametrize_family


def pytest_generate_tests(metafunc):
    parametrize_family(metafunc, "rnn")


@pytest.mark.parametrize("impl", ["torch", "fastdl"])
def test_rnn(benchmark, case, impl):
    benchmark_case(benchmark, case, impl)
