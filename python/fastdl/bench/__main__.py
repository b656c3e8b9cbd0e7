"""python -m fastdl.bench: fastdl against PyTorch on the layers of the reference networks.

    python -m fastdl.bench [--device cpu|cuda] [--ops pool,bn] [--quick] [--batches 1,32,128]
                           [--dtype float32[,bfloat16...]] [--threads N] [--out DIR]

Every case first checks that fastdl's result equals torch's, then times both sides interleaved in
one run and reports the speedup (torch time / fastdl time) and fastdl's achieved bandwidth against
the machine's measured copy bandwidth. Results go to DIR (default bench/results/<device>/) as
<family>.json and <family>.md. The exit status is 1 if any case failed its check.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
from pathlib import Path

import torch

import fastdl
from fastdl.bench.cases import FAMILIES, Case
from fastdl.bench.ceilings import copy_bandwidth_gbps
from fastdl.bench.report import case_line, summary, summary_lines, write_report
from fastdl.bench.timing import time_pair


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m fastdl.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda when a GPU is visible and fastdl was built with CUDA, else cpu")
    p.add_argument("--ops", default=",".join(FAMILIES), help=f"comma-separated families: {', '.join(FAMILIES)}")
    p.add_argument("--quick", action="store_true", help="a few layers per family")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default: per family)")
    p.add_argument("--dtype", default="float32", help="comma-separated dtypes")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both sides (default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default bench/results/<device>)")
    return p.parse_args(argv)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, check=True).stdout.strip()
        # Recorded results are not part of what was measured.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                ":(top,exclude)bench/results"], capture_output=True, text=True,
                               cwd=Path(__file__).parent).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# Largest difference from torch's result, relative to the largest value of that result, that a
# non-exact case may show (float32 sums in another order; one rounding of a reduced-precision output).
CHECK_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def check(case: Case, inputs) -> str | None:
    """None if fastdl's result matches torch's, else what differs."""
    ours, theirs = case.make_step("fastdl", inputs)(), case.make_step("torch", inputs)()
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


def run_case(case: Case, env: dict, budget_s: float) -> dict:
    row = {"id": case.id, "family": case.family, "network": case.network, "layer": case.layer, "op": case.op,
           "batch": case.batch, "input_shape": list(case.shape), "dtype": str(case.dtype).removeprefix("torch."),
           "mode": case.mode}
    if getattr(case, "algorithm", "auto") != "auto":
        row["algorithm"] = case.algorithm
    inputs = case.make_inputs()
    try:
        row["error"] = check(case, inputs)
        if row["error"]:
            return row
        fast, ref = time_pair(case.make_step("fastdl", inputs), case.make_step("torch", inputs), case.device,
                              budget_s=budget_s)
    except (RuntimeError, torch.OutOfMemoryError) as e:
        row["error"] = str(e).splitlines()[0]
        return row
    finally:
        del inputs
        if case.device == "cuda":
            torch.cuda.empty_cache()
    row.update(baseline=case.baseline, fastdl_ms=fast.median_ms, torch_ms=ref.median_ms,
               speedup=ref.median_ms / fast.median_ms, fastdl_timing=fast.as_dict(), torch_timing=ref.as_dict())
    if case.flops() is not None:
        row.update(flops=case.flops(), fastdl_gflops=case.flops() / (fast.median_ms * 1e6),
                   torch_gflops=case.flops() / (ref.median_ms * 1e6))
    else:
        gbps = case.bytes_moved() / (fast.median_ms * 1e-3) / 1e9
        row.update(bytes_moved=case.bytes_moved(), fastdl_gbps=gbps,
                   torch_gbps=case.bytes_moved() / (ref.median_ms * 1e-3) / 1e9,
                   fraction_of_ceiling=gbps / env["copy_gbps"])
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() and fastdl.cuda_enabled() else "cpu")
    if device == "cuda" and not (torch.cuda.is_available() and fastdl.cuda_enabled()):
        sys.exit("fastdl.bench: --device cuda needs a visible GPU and fastdl built with CUDA")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    env = {
        "device": device,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "fastdl": fastdl.build_info(),
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "copy_gbps": copy_bandwidth_gbps(device),
    }
    print(f"fastdl.bench on {env['device_name']} ({device}, {env['threads']} threads), torch {env['torch']}, "
          f"commit {env['commit']}; copy bandwidth {env['copy_gbps']:.1f} GB/s", flush=True)
    out_dir = args.out or Path("bench/results") / device
    budget_s = 0.5 if device == "cuda" else 2.0
    dtypes = [getattr(torch, name) for name in args.dtype.split(",")]
    failed = False
    for family in args.ops.split(","):
        batches = {"batches": [int(b) for b in args.batches.split(",")]} if args.batches else {}
        if family not in FAMILIES:
            sys.exit(f"fastdl.bench: unknown family {family!r}; known: {', '.join(FAMILIES)}")
        todo = [c for dt in dtypes for c in FAMILIES[family](device, dt, quick=args.quick, **batches)]
        results = []
        for i, case in enumerate(todo, 1):
            results.append(run_case(case, env, budget_s))
            print(case_line(i, len(todo), results[-1]), flush=True)
        name = family + ("-quick" if args.quick else "") + ("" if args.dtype == "float32" else "-" + args.dtype.replace(",", "-"))
        paths = write_report(out_dir, name, family, env, results)
        print("\n".join(summary_lines(family, summary(results))))
        print("wrote " + ", ".join(str(p) for p in paths))
        failed |= any(r.get("error") for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
