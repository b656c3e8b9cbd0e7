"""python -m fastdl.bench: fastdl against PyTorch on the layers of the reference networks.

    python -m fastdl.bench [--device cpu|cuda] [--ops pool,bn,conv,winograd,rnn] [--quick | --smoke]
                           [--batches 1,32,128] [--dtype float32[,bfloat16...]] [--threads N] [--out DIR]
                           [--channels-last (with --ops conv,winograd)]
    python -m fastdl.bench compare OLD.json NEW.json

The run first measures the machine's ceilings (copy bandwidth; matrix-product FLOP/s per dtype).
Every case then checks that fastdl's result equals torch's, times both sides interleaved in one run
and reports the speedup (torch time / fastdl time), the achieved GB/s or FLOP/s as a fraction of the
ceiling, and each side's peak memory. Results go to DIR (default bench/results/<device>/): per
family <name>.json (every measurement, with device, torch version, commit and date), <name>.md
(tables and summary) and PNG plots (speedup per layer; time against batch size and sequence
length), where <name> is the family with -quick, -smoke, non-default dtypes and -channels-last appended. A table
across families ends the output. The exit status is 1 if any case failed its check.

`compare` prints how each case's speedup changed between two such JSON files and exits with 1 when
one regressed beyond the measured noise (fastdl/bench/compare.py).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import torch

import fastdl
from fastdl.bench import compare
from fastdl.bench.case import Case, true_float32
from fastdl.bench.cases import CHANNELS_LAST_FAMILIES, FAMILIES
from fastdl.bench.environment import environment
from fastdl.bench.measure import run_case
from fastdl.bench.plots import write_plots
from fastdl.bench.progress import Progress
from fastdl.bench.report import (case_line, header, host_lines, overall_lines, summary, summary_lines,
                                 write_report)
from fastdl.bench.timing import cupy_crosscheck


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m fastdl.bench", description=__doc__.split("\n\n")[0],
                                epilog="python -m fastdl.bench compare OLD.json NEW.json: changes between two runs")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda when a GPU is visible and fastdl was built with CUDA, else cpu")
    p.add_argument("--ops", default=",".join(FAMILIES), help=f"comma-separated families: {', '.join(FAMILIES)}")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a few layers and batch sizes per family")
    size.add_argument("--smoke", action="store_true",
                      help="per family the cheapest quick case at batch 1 and at 2 (or each of --batches), minimal "
                           "timing and small ceilings: proves the runner works, its numbers mean nothing")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default: per family)")
    p.add_argument("--dtype", default="float32", help="comma-separated dtypes")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both sides (default: torch's)")
    p.add_argument("--channels-last", action="store_true",
                   help=f"channels-last images, weights and gradients (families {', '.join(CHANNELS_LAST_FAMILIES)})")
    p.add_argument("--out", type=Path, default=None, help="output folder (default bench/results/<device>)")
    return p.parse_args(argv)


def cost(case: Case) -> int:
    flops = case.flops()
    return flops if flops is not None else case.bytes_moved()


def select(family: str, device: str, dtypes: list[torch.dtype], args) -> list[Case]:
    """The family's cases for the run; for --smoke, the cheapest case at each batch size."""
    batches = [int(b) for b in args.batches.split(",")] if args.batches else [1, 2] if args.smoke else None
    options = {"batches": batches} if batches else {}
    if args.channels_last:
        options["channels_last"] = True
    cases = [c for dt in dtypes for c in FAMILIES[family](device, dt, quick=args.quick or args.smoke, **options)]
    if not args.smoke:
        return cases
    cheapest = {}
    for case in sorted(cases, key=cost):
        cheapest.setdefault(case.batch, case)
    return [cheapest[b] for b in batches if b in cheapest] or sorted(cases, key=cost)[:1]


def counting_notes(cases: list[Case]) -> list[str]:
    """How the family's rates are counted, from the docstrings of its cases' flops() or bytes_moved()."""
    notes = []
    for case in cases:
        method = type(case).flops if case.flops() is not None else type(case).bytes_moved
        if inspect.getdoc(method):
            notes.append(f"{'FLOPs' if method.__name__ == 'flops' else 'bytes'} counted ({type(case).__name__}): "
                         + " ".join(inspect.getdoc(method).split()))
    return list(dict.fromkeys(notes))


def run_name(family: str, args) -> str:
    size = "-quick" if args.quick else "-smoke" if args.smoke else ""
    return (family + size + ("" if args.dtype == "float32" else "-" + args.dtype.replace(",", "-"))
            + ("-channels-last" if args.channels_last else ""))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        return compare.main(argv[1:])
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() and fastdl.cuda_enabled() else "cpu")
    if device == "cuda" and not (torch.cuda.is_available() and fastdl.cuda_enabled()):
        sys.exit("fastdl.bench: --device cuda needs a visible GPU and fastdl built with CUDA")
    unknown = [f for f in args.ops.split(",") if f not in FAMILIES]
    if unknown:
        sys.exit(f"fastdl.bench: unknown family {unknown[0]!r}; known: {', '.join(FAMILIES)}")
    other = [f for f in args.ops.split(",") if f not in CHANNELS_LAST_FAMILIES]
    if args.channels_last and other:
        sys.exit(f"fastdl.bench: --channels-last applies to the families {', '.join(CHANNELS_LAST_FAMILIES)}, "
                 f"not {other[0]!r} (pass --ops)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    true_float32()
    dtypes = [getattr(torch, name) for name in args.dtype.split(",")]
    plan = {family: select(family, device, dtypes, args) for family in args.ops.split(",")}

    env = environment(device, dtypes, small_ceilings=args.smoke)
    print(header(env), flush=True)
    first = next((cases[0] for cases in plan.values() if cases), None)
    if device == "cuda" and first is not None:
        env["cupy_crosscheck"] = {"case": first.id, **cupy_crosscheck(first.make_step("fastdl", first.make_inputs()))}
        print(f"timer cross-check: {env['cupy_crosscheck']}", flush=True)

    out_dir = args.out or Path("bench/results") / device
    budget_s, min_samples = (0.0, 3) if args.smoke else (0.5, 5) if device == "cuda" else (0.3, 5) if args.quick \
        else (2.0, 5)
    # On the CPU, short cases keep sampling for the whole budget (up to 400 samples a side), so that their
    # medians span seconds of the shared machine, not the tenth of a second that 40 samples of a 1 ms call
    # took (bench/NOTES.md, Convolution 27).
    max_samples = 40 if device == "cuda" else 400
    progress = Progress(sum(len(cases) for cases in plan.values()))
    by_family = {}
    for family, todo in plan.items():
        results = by_family[family] = []
        for i, case in enumerate(todo, 1):
            progress.start(case.id)
            results.append(run_case(case, env, budget_s, min_samples, max_samples))
            progress.finish(case_line(i, len(todo), results[-1], device))
        name = run_name(family, args)
        paths = write_report(out_dir, name, family, env, results, counting_notes(todo))
        try:
            paths += write_plots(out_dir, name, family, results)
        except ImportError:
            progress.print("plots skipped: matplotlib is not installed")
        written = "wrote " + ", ".join(str(p) for p in paths)
        for line in summary_lines(family, summary(results)) + host_lines(results) + [written]:
            progress.print(line)
    progress.close()
    print("\n" + "\n".join(overall_lines(by_family)))
    return 1 if any(r.get("error") for results in by_family.values() for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
