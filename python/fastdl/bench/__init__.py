"""fastdl's benchmarks: `python -m fastdl.bench` (the runner) and the case definitions that the
pytest-benchmark suites in bench/ share with it."""

# The family modules (rnn_cases.py...) build on cases.py, which registers them at its end: importing it
# first lets any of them be imported on its own.
from fastdl.bench import cases  # noqa: F401
