"""Where the peak memory of one RNN training step goes on the GPU: replays the CUDA caching
allocator's trace (torch.cuda.memory._record_memory_history) of one step of a bench case, finds the
moment the most memory was held, and lists the blocks alive then, grouped by the Python line that
allocated them. The step is the bench's (fastdl/bench/rnn_cases.py): LSTM or GRU, input 256, T50.

    PYTHONPATH=python python bench/rnn_memory_trace.py --kind LSTM --batch 64 [--impl torch]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from fastdl.bench.rnn_cases import RNN_INPUT, RnnCase

STACK_DEPTH = 3  # Python frames shown per allocation site, innermost first


def make_step(args):
    case = RnnCase("rnn", args.kind, "", "", args.batch, (args.seq, args.batch, RNN_INPUT), torch.float32,
                   "cuda", "training step", hidden=args.hidden, bidirectional=args.bidirectional)
    inputs = case.make_inputs()
    return case.make_step(args.impl, inputs)


def site(frames) -> str:
    own = [f for f in frames if f["filename"].endswith(".py") and "torch/cuda/memory" not in f["filename"]
           and "rnn_memory_trace" not in f["filename"]]
    names = [f["name"].split("(")[0] for f in frames]  # C++ frames too (stacks="all"), innermost first
    first_ours = next((i for i, n in enumerate(names) if "fastdl" in n), None)
    callee = [names[first_ours - 1]] if first_ours else []  # what fastdl's code called (at::mm, ...)
    ours = [n for n in names if "fastdl" in n][:2]
    python = [f"{f['filename'].split('/')[-1]}:{f['line']} {f['name']}" for f in own[:STACK_DEPTH]]
    return " <- ".join(callee + ours + python) or "(no Python or fastdl frame)"


def live_at_peak(trace):
    live, held, peak, at_peak = {}, 0, 0, {}
    for event in trace:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            held += event["size"]
            if held > peak:
                peak, at_peak = held, dict(live)
        elif event["action"] == "free_completed" and event["addr"] in live:
            held -= live.pop(event["addr"])["size"]
    return peak, at_peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="LSTM", choices=("LSTM", "GRU"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--seq", type=int, default=50)
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--impl", default="fastdl", choices=("fastdl", "torch"))
    args = parser.parse_args()

    step = make_step(args)
    for _ in range(3):  # warm-up: workspaces, handles and the allocator's pools exist before the trace
        step()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(stacks="all", max_entries=1_000_000)
    step()
    torch.cuda.synchronize()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    trace = [e for device_trace in snapshot["device_traces"] for e in device_trace]

    peak, blocks = live_at_peak(trace)
    mib = 1 << 20
    print(f"# {args.impl} {args.kind} b{args.batch} h{args.hidden} T{args.seq}"
          f"{' bi' if args.bidirectional else ''}: training step on the GPU\n")
    print(f"- max_memory_allocated - before: {(torch.cuda.max_memory_allocated() - before) / mib:.1f} MiB")
    print(f"- held at the trace's peak (allocations made inside the step): {peak / mib:.1f} MiB "
          f"in {len(blocks)} blocks\n")
    sites = defaultdict(list)
    for block in blocks.values():
        sites[site(block.get("frames", []))].append(block["size"])
    print("| MiB | blocks (MiB each) | allocated by (what fastdl called, fastdl frames, innermost Python frames) |\n"
          "| --- | --- | --- |")
    for where, sizes in sorted(sites.items(), key=lambda kv: -sum(kv[1])):
        each = ", ".join(f"{size / mib:.2f}" for size in sorted(sizes, reverse=True))
        print(f"| {sum(sizes) / mib:.2f} | {len(sizes)} ({each}) | {where} |")


if __name__ == "__main__":
    main()
