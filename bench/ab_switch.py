"""A CPU convolution timed two ways, call by call in one process: for changes measured on a machine whose
speed drifts by tens of percent from minute to minute (bench/NOTES.md, convolution entry 34).

Two sides alternate on every round (each goes first in half of them), so drift reaches both alike; the
median of the per-round ratios, with its quartiles, is the result (on the disturbed dev machine the
quartiles sat within 2-3% of the median where separate processes' medians moved 10-30%). Sides:
- --switch VAR=VALUE: fastdl with the environment variable VAR set to VALUE against fastdl without it.
  The kernel must read VAR on every call (std::getenv in the code under test; a function-local static
  reads it once, and both sides then run the same code);
- --torch: fastdl against torch.nn.functional.conv2d.
The forward by default (fastdl's algorithm 'auto' unless --algorithm); --backward adds both gradients (autograd),
--input-grad and --weight-grad time one gradient alone through the backward ops (fastdl.conv2d_backward,
the direct kernels even where 'auto' would take Winograd; aten.convolution_backward).
glibc's mmap threshold is pinned first, so outputs come from the heap and no call page-faults (as in
fastdl.bench's runner).

    PYTHONPATH=python python bench/ab_switch.py 8 256 1024 14 --switch FASTDL_X=1 [--threads 1]
"""

import argparse
import ctypes
import functools
import os
import statistics
import time


def pin_glibc_heap() -> None:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD: buffers up to 256 MB come from the heap
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: freed memory stays mapped


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("batch", "in_channels", "out_channels", "size"):
        p.add_argument(name, type=int)
    p.add_argument("--kernel", type=int, default=1)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--backward", action="store_true", help="forward and both gradients")
    grads = p.add_mutually_exclusive_group()
    grads.add_argument("--input-grad", action="store_true", help="the input gradient alone (the backward op)")
    grads.add_argument("--weight-grad", action="store_true", help="the weight gradient alone (the backward op)")
    p.add_argument("--channels-last", action="store_true", help="input, weight and gradients channels-last")
    p.add_argument("--algorithm", default="auto", help="fastdl's forward algorithm (auto, direct, winograd2, ...)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=100)
    side = p.add_mutually_exclusive_group(required=True)
    side.add_argument("--switch", metavar="VAR=VALUE")
    side.add_argument("--torch", action="store_true")
    args = p.parse_args()

    pin_glibc_heap()
    import torch
    import torch.nn.functional as F

    import fastdl

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.in_channels, args.size, args.size, requires_grad=args.backward)
    w = (torch.randn(args.out_channels, args.in_channels, args.kernel, args.kernel) * 0.05).requires_grad_(
        args.backward)
    if args.channels_last:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_(args.backward)
        w = w.detach().to(memory_format=torch.channels_last).requires_grad_(args.backward)
    conv_args = (None, args.stride, args.kernel // 2)

    def one_grad(conv):
        grad_out = torch.randn_like(F.conv2d(x.detach(), w.detach(), *conv_args))  # in the output's format
        mask = [args.input_grad, args.weight_grad, False]
        if conv is F.conv2d:
            return lambda: torch.ops.aten.convolution_backward(grad_out, x, w, None, [args.stride] * 2,
                                                             [args.kernel // 2] * 2, [1, 1], False, [0, 0], 1, mask)
        return lambda: torch.ops.fastdl.conv2d_backward(grad_out, x, w, [args.stride], [args.kernel // 2], [1], 1,
                                                        mask)

    def timed(conv):
        if conv is not F.conv2d:
            conv = functools.partial(conv, algorithm=args.algorithm)
        if args.input_grad or args.weight_grad:
            return one_grad(conv)

        def call():
            if args.backward:
                y = conv(x, w, *conv_args)
                torch.autograd.grad(y, (x, w), torch.ones_like(y))
            else:
                with torch.no_grad():
                    conv(x, w, *conv_args)
        return call

    if args.torch:
        names, calls = ("torch", "fastdl"), (timed(F.conv2d), timed(fastdl.ops.conv2d))
        setups = (lambda: None, lambda: None)
    else:
        var, _, value = args.switch.partition("=")
        names, calls = (f"{var} unset", f"{var}={value}"), (timed(fastdl.ops.conv2d),) * 2
        setups = (lambda: os.environ.pop(var, None), lambda: os.environ.__setitem__(var, value))

    for _ in range(5):
        for setup, call in zip(setups, calls):
            setup()
            call()
    times, ratios = ([], []), []
    for r in range(args.rounds):
        this = [0.0, 0.0]
        for s in ((0, 1) if r % 2 == 0 else (1, 0)):
            setups[s]()
            t0 = time.perf_counter()
            calls[s]()
            this[s] = time.perf_counter() - t0
            times[s].append(this[s])
        ratios.append(this[0] / this[1])
    setups[0]()
    for name, t in zip(names, times):
        print(f"{name}: fastest {min(t) * 1e3:.3f} ms, median {statistics.median(t) * 1e3:.3f} ms")
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    print(f"time of '{names[0]}' over '{names[1]}', per round: median {statistics.median(ratios):.3f} "
          f"(quartiles {q1:.3f}, {q3:.3f}; above 1: '{names[1]}' is faster)")


if __name__ == "__main__":
    main()
