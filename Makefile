# fastdl's commands. On a fresh machine `make test` and `make bench` create .venv (torch and
# torchvision come from this machine's local wheels), build the extension and run.
#
#   make test        build, then the test suite (CUDA tests skip without a GPU)
#   make bench       build, then the benchmark runner (GPU if present, else CPU)
#   make cpp-test    CMake build against the venv's libtorch, then ctest
#   make gpu-check   on a GPU machine: its own python3 and torch, no venv; build with CUDA, run
#                    every CUDA test and the GPU benchmarks, record results in bench/results/
#   make clean

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MAX_JOBS ?= 2
export MAX_JOBS

TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEV_PACKAGES := pybind11 ninja pytest pytest-benchmark hypothesis numpy
SOURCES := setup.py $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh')

.PHONY: test bench cpp-test gpu-check build clean

test: build
	$(PY) -m pytest tests -q

bench: build
	$(PY) -m fastdl.bench

# The venv, once: a stamp file marks it complete.
$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q setuptools wheel $(TORCH_PINS) $(DEV_PACKAGES)
	touch $@

# Registered with pip once (editable); afterwards build_ext rebuilds only what changed.
$(VENV)/.installed: $(VENV)/.deps
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.installed $(SOURCES)
	$(PY) setup.py -q build_ext --inplace

CMAKE_BUILD := build/cmake
cpp-test: $(VENV)/.deps
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" cmake -S . -B $(CMAKE_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release \
		-DFASTDL_CUDA=$${FASTDL_CUDA:-OFF} \
		-DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')"
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" cmake --build $(CMAKE_BUILD) -j $(MAX_JOBS)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" ctest --test-dir $(CMAKE_BUILD) --output-on-failure

# On the GPU machine: no venv (its python3 has torch, pytest, hypothesis, CuPy); nothing to install.
# The benchmarks run even when a test fails, so one call records everything; the exit status is the
# tests'.
GPU_OUT := bench/results/cuda
gpu-check:
	FASTDL_CUDA=1 MAX_JOBS=$$(nproc) $(PYTHON) setup.py -q build_ext --inplace
	mkdir -p $(GPU_OUT)
	set -o pipefail; PYTHONPATH=python $(PYTHON) -m pytest tests -q -m cuda -p no:cacheprovider \
		2>&1 | tee $(GPU_OUT)/cuda-tests.log; status=$$?; \
	PYTHONPATH=python $(PYTHON) -m fastdl.bench --device cuda --out $(GPU_OUT) || status=1; \
	exit $$status

clean:
	rm -rf build python/fastdl/*.so
