"""Peak memory of one step: the most bytes the step holds allocated at once beyond what was live when
it began (its outputs, saved tensors and workspaces; not the inputs, which both sides share).

- CUDA: torch.cuda.max_memory_allocated after resetting the peak, less what was allocated before
  (the caching allocator's tensor bytes, not its reserved pool).
- CPU: torch has no allocator statistics there; the profiler (profile_memory=True) records every
  allocation and free of the CPU allocator on the calling thread, and the peak is the largest
  running sum of those events in time order. Ops allocate their outputs and workspaces on the
  calling thread; buffers a kernel's worker threads allocate themselves would not be counted.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile


@contextlib.contextmanager
def _quiet_stderr():
    """Silences file descriptor 2: the profiler's C++ side logs lines of its own for every session."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes(step: Callable[[], object], device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak
