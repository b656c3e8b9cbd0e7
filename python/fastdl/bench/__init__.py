"""fastdl's benchmarks: `python -m fastdl.bench` (the runner) and the case definitions that the
pytest-benchmark suites in bench/ share with it."""
