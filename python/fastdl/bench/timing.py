"""How every benchmark measures: warm-up, then repetitions that alternate the two sides and their
order (so drift and noise hit both alike), reported as median and spread. On the GPU each sample
is timed with CUDA events around enough back-to-back calls to last well past launch overhead."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastdl.bench.host import HostCounts


@dataclass
class Timing:
    median_ms: float
    low_ms: float  # 10th percentile
    high_ms: float  # 90th percentile
    samples: int
    host: dict | None = None  # CPU: what else the host did during the samples (fastdl/bench/host.py)

    def as_dict(self) -> dict:
        return {"median_ms": self.median_ms, "p10_ms": self.low_ms, "p90_ms": self.high_ms, "samples": self.samples,
                **({"host": self.host} if self.host is not None else {})}


def _summary(samples: list[float], host: dict | None = None) -> Timing:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return Timing(statistics.median(ordered), pick(0.1), pick(0.9), len(ordered), host)


class Sampler:
    """Times `calls` back-to-back calls of a step, in milliseconds per call."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def sample(self, step: Callable[[], object], calls: int) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                step()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / calls
        begin = time.perf_counter()
        for _ in range(calls):
            step()
        return (time.perf_counter() - begin) * 1e3 / calls


def time_pair(
    a: Callable[[], object],
    b: Callable[[], object],
    device: str,
    min_samples: int = 5,
    max_samples: int = 40,
    budget_s: float = 3.0,
    min_sample_ms: float = 1.0,
) -> tuple[Timing, Timing]:
    """Median times of steps a and b, sampled alternately until `budget_s` (at least min_samples,
    at most max_samples). Each sample repeats a step enough times to last min_sample_ms."""
    sampler = Sampler(device)
    for step in (a, b):  # warm-up: allocator, caches, lazy initialisation
        step()
        step()
    sampler.sync()
    single = max(1e-3, min(sampler.sample(a, 1), sampler.sample(b, 1)))
    calls = max(1, min(1000, int(min_sample_ms / single)))
    samples: tuple[list[float], list[float]] = ([], [])
    counts = [HostCounts(), HostCounts()]  # per side, summed over its samples (CPU)
    begin = time.perf_counter()
    while len(samples[0]) < max_samples and (
        len(samples[0]) < min_samples or time.perf_counter() - begin < budget_s
    ):
        order = ((a, 0), (b, 1))
        for step, side in order if len(samples[0]) % 2 == 0 else reversed(order):
            before = None if sampler.cuda else HostCounts.now()
            samples[side].append(sampler.sample(step, calls))
            if before is not None:
                counts[side] += HostCounts.now() - before
    if sampler.cuda:
        return _summary(samples[0]), _summary(samples[1])
    return tuple(_summary(s, c.as_dict(calls * len(s), sum(s) * calls * 1e-3)) for s, c in zip(samples, counts))


def cupy_crosscheck(step: Callable[[], object], repeats: int = 200) -> dict:
    """The CUDA event timer against CuPy's (cupyx.profiler.benchmark) on the same step: medians in ms
    per call. CuPy times each call alone, so launch gaps count there and not in back-to-back samples."""
    try:
        from cupyx.profiler import benchmark
    except ImportError:
        return {"skipped": "cupy is not installed"}
    ours, _ = time_pair(step, step, "cuda", budget_s=0.5)
    theirs = benchmark(step, n_repeat=repeats, n_warmup=10, max_duration=2.0)
    return {"events_ms": ours.median_ms, "cupy_gpu_ms": float(statistics.median(theirs.gpu_times[0])) * 1e3,
            "cupy_cpu_ms": float(statistics.median(theirs.cpu_times)) * 1e3}


def with_env(step: Callable[[], object], name: str, value: str) -> Callable[[], object]:
    """step() with environment variable `name` set to `value` during the call (fastdl's kernel-path
    overrides, csrc/common/overrides.h, are read on every call), for A/B runs of two paths."""
    def run():
        saved = os.environ.get(name)
        os.environ[name] = value
        try:
            return step()
        finally:
            if saved is None:
                del os.environ[name]
            else:
                os.environ[name] = saved
    return run
