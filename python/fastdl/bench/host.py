"""What else the host did while a CPU side was timed, so that a slow row can be told from a disturbed
one: this process's minor page faults and involuntary context switches (its threads preempted by
another task), and the machine's steal time (a virtual machine's CPUs given to someone else), summed
over a side's samples (Linux only; elsewhere the counts that cannot be read stay None); and two
canaries timed just before and after a case: the speed of a small matrix product, and of a copy that
lives in the last-level cache."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

import torch

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
_CPUS = os.cpu_count() or 1


def steal_seconds() -> float | None:
    """CPU time stolen from this machine since boot, summed over its CPUs (the 8th number of
    /proc/stat's 'cpu' line), or None where that cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / _TICKS_PER_SECOND if fields[0] == "cpu" else None
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class HostCounts:
    minor_faults: int = 0
    preemptions: int = 0
    steal_s: float | None = 0.0

    @staticmethod
    def now() -> HostCounts:
        usage = resource.getrusage(resource.RUSAGE_SELF)  # summed over every thread of the process
        return HostCounts(usage.ru_minflt, usage.ru_nivcsw, steal_seconds())

    def __sub__(self, other: HostCounts) -> HostCounts:
        steal = None if self.steal_s is None or other.steal_s is None else self.steal_s - other.steal_s
        return HostCounts(self.minor_faults - other.minor_faults, self.preemptions - other.preemptions, steal)

    def __add__(self, other: HostCounts) -> HostCounts:
        steal = None if self.steal_s is None or other.steal_s is None else self.steal_s + other.steal_s
        return HostCounts(self.minor_faults + other.minor_faults, self.preemptions + other.preemptions, steal)

    def as_dict(self, calls: int, wall_s: float) -> dict:
        """Per call, per sample-second, and the share of the machine's CPU time stolen."""
        return {"minor_faults_per_call": self.minor_faults / max(calls, 1),
                "preemptions_per_s": self.preemptions / max(wall_s, 1e-9),
                "steal_fraction": None if self.steal_s is None else self.steal_s / (max(wall_s, 1e-9) * _CPUS)}


_CANARY: dict = {}


def canary_gflops(size: int = 256, calls: int = 10) -> float:
    """The machine's speed right now: GFLOP/s of the fastest of `calls` float32 matrix products of
    size x size (in cache: 0.2 ms on the 2-core development machine). A neighbour that takes the cores'
    other hyperthreads, or their clock, slows it and both sides of a case with it, which neither steal
    time nor preemptions show."""
    if size not in _CANARY:
        _CANARY[size] = (torch.rand(size, size), torch.rand(size, size), torch.empty(size, size))
    a, b, out = _CANARY[size]
    best = float("inf")
    for _ in range(calls):
        begin = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - begin)
    return 2 * size**3 / best / 1e9


def cache_copy_gbps(megabytes: int = 8, calls: int = 10) -> float:
    """The shared cache's speed right now: GB/s (read plus written) of the fastest of `calls` copies of
    `megabytes` of float32 into a second buffer, the two together inside the development machine's 32 MB
    L3 and far outside its 512 KB L2s (0.25 ms a copy there). For minutes at a time it ran at 30-45
    instead of 68-95 GB/s while the matrix-product canary, which runs in L1 and L2, read its usual
    160-170 GFLOP/s and a 128 MB copy its usual 19-22 GB/s: the shared L3 slowed by something else,
    a neighbour streaming through it most likely (bench/NOTES.md, convolution entry 29)."""
    key = ("copy", megabytes)
    if key not in _CANARY:
        elements = megabytes * 1024 * 1024 // 4
        _CANARY[key] = (torch.rand(elements), torch.empty(elements))
    src, dst = _CANARY[key]
    best = float("inf")
    for _ in range(calls):
        begin = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - begin)
    return 2 * src.numel() * 4 / best / 1e9
