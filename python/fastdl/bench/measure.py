"""One case, measured: check fastdl's result against torch's, time both sides interleaved, take each
side's peak memory, and rate the median times against the machine's ceilings."""

from __future__ import annotations

import torch

from fastdl.bench.case import Case, dtype_name
from fastdl.bench.host import cache_copy_gbps, canary_gflops
from fastdl.bench.memory import peak_bytes
from fastdl.bench.timing import time_pair

# Largest difference from torch's result, relative to the largest value of that result, that a
# non-exact case may show (float32 sums in another order; one rounding of a reduced-precision output).
CHECK_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def check(case: Case, inputs) -> str | None:
    """None if fastdl's result matches torch's, else what differs."""
    ours, theirs = case.make_step("fastdl", inputs)(), case.reference_step(inputs)()
    pairs = zip(ours, theirs) if isinstance(ours, (tuple, list)) else [(ours, theirs)]
    for i, (a, b) in enumerate(pairs):
        if case.exact:
            if not torch.equal(a, b):
                return f"output {i} differs from torch's"
            continue
        scale = b.abs().max().item() if b.numel() else 0.0
        err = (a.double() - b.double()).abs().max().item() if b.numel() else 0.0
        if not err <= CHECK_TOLERANCE[case.dtype] * max(scale, 1e-30):
            return f"output {i}: largest difference {err:.3g} for values up to {scale:.3g}"
    return None


def rates(case: Case, fastdl_ms: float, torch_ms: float, env: dict) -> dict:
    """GFLOP/s against the matrix product of the case's dtype where the case counts FLOPs, else GB/s
    against the copy bandwidth; 'fraction' is of that ceiling."""
    flops = case.flops()
    if flops is not None:
        amount, unit, ceiling, name = flops, "gflops", env["matmul_gflops"][dtype_name(case.dtype)], "matmul"
    else:
        amount, unit, ceiling, name = case.bytes_moved(), "gbps", env["copy_gbps"], "copy"
    fast, ref = amount / (fastdl_ms * 1e6), amount / (torch_ms * 1e6)
    return {"flops" if flops is not None else "bytes_moved": amount, f"fastdl_{unit}": fast, f"torch_{unit}": ref,
            "ceiling": name, "fraction_of_ceiling": fast / ceiling, "torch_fraction_of_ceiling": ref / ceiling}


def run_case(case: Case, env: dict, budget_s: float, min_samples: int, max_samples: int = 40) -> dict:
    row = {"id": case.id, "family": case.family, "network": case.network, "layer": case.layer, "op": case.op,
           "batch": case.batch, "input_shape": list(case.shape), "dtype": dtype_name(case.dtype),
           "mode": case.mode, "axes": case.axes()}
    if getattr(case, "algorithm", "auto") != "auto":
        row["algorithm"] = case.algorithm
    inputs = case.make_inputs()
    try:
        row["error"] = check(case, inputs)
        if row["error"]:
            return row
        steps = {impl: case.make_step(impl, inputs) for impl in ("fastdl", "torch")}
        canaries = [(canary_gflops(), cache_copy_gbps())] if case.device == "cpu" else []
        fast, ref = time_pair(steps["fastdl"], steps["torch"], case.device, min_samples=min_samples,
                              max_samples=max_samples, budget_s=budget_s)
        if canaries:  # before and after the samples (fastdl/bench/host.py)
            canaries.append((canary_gflops(), cache_copy_gbps()))
            row["canary_gflops"], row["cache_copy_gbps"] = (list(c) for c in zip(*canaries))
        peaks = {f"{impl}_peak_bytes": peak_bytes(step, case.device) for impl, step in steps.items()}
    except (RuntimeError, torch.OutOfMemoryError) as e:
        row["error"] = str(e).splitlines()[0]
        return row
    finally:
        del inputs
        if case.device == "cuda":
            torch.cuda.empty_cache()
    row.update(baseline=case.baseline, fastdl_ms=fast.median_ms, torch_ms=ref.median_ms,
               speedup=ref.median_ms / fast.median_ms, fastdl_timing=fast.as_dict(), torch_timing=ref.as_dict(),
               **peaks, **rates(case, fast.median_ms, ref.median_ms, env))
    return row
