"""The machine's measured ceilings that results are reported against: memory bandwidth from a large
copy (bytes read plus bytes written, per second)."""

from __future__ import annotations

import torch

from fastdl.bench.timing import time_pair


def copy_bandwidth_gbps(device: str, megabytes: int = 1024) -> float:
    """Achieved GB/s of a large tensor copy on `device` (all of torch's CPU threads on the CPU)."""
    n = megabytes * 2**20 // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    copy = lambda: dst.copy_(src)  # noqa: E731
    timing, _ = time_pair(copy, copy, device, min_samples=5, max_samples=20, budget_s=2.0)
    return 2 * n * 4 / (timing.median_ms * 1e-3) / 1e9
