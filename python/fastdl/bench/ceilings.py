"""The machine's measured ceilings that results are reported against, measured at the start of a run
with the run's thread count: memory bandwidth from a large copy (bytes read plus bytes written, per
second), and arithmetic throughput from a large matrix product (torch.mm, 2 n^3 FLOP) per dtype,
TF32 off so that float32 means true float32."""

from __future__ import annotations

import torch

from fastdl.bench.case import dtype_name
from fastdl.bench.timing import time_pair


def _per_second(step, device: str, amount: float, budget_s: float) -> float:
    """`amount` divided by the step's median time, the faster of the two interleaved sides."""
    a, b = time_pair(step, step, device, min_samples=3, max_samples=20, budget_s=budget_s)
    return amount / (min(a.median_ms, b.median_ms) * 1e-3)


def copy_bandwidth_gbps(device: str, megabytes: int = 1024, budget_s: float = 2.0) -> float:
    """Achieved GB/s of a large tensor copy on `device`."""
    src = torch.rand(megabytes * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    return _per_second(lambda: dst.copy_(src), device, 2 * src.nbytes, budget_s) / 1e9


def matmul_gflops(device: str, dtype: torch.dtype, n: int, budget_s: float = 2.0) -> float:
    """Achieved GFLOP/s of an n x n matrix product in `dtype`."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return _per_second(lambda: torch.mm(a, b, out=out), device, 2 * n**3, budget_s) / 1e9
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def measure(device: str, dtypes: list[torch.dtype], small: bool = False) -> dict:
    """Every ceiling the run's results refer to; `small` sizes them for a smoke test (seconds)."""
    budget_s = 0.2 if small else 2.0
    n = 256 if small else 8192 if device == "cuda" else 2048
    wanted = dict.fromkeys([torch.float32, *([torch.bfloat16] if device == "cuda" else []), *dtypes])
    return {"copy_gbps": copy_bandwidth_gbps(device, 64 if small else 1024, budget_s),
            "matmul_gflops": {dtype_name(dt): matmul_gflops(device, dt, n, budget_s) for dt in wanted}}
