"""The Winograd convolution's weight gradient alone, on every 3x3 stride-1 layer of VGG-16 and ResNet-50:
fastdl's Winograd weight gradient (F(2x2,3x3) and F(4x4,3x3)) against fastdl's direct kernel (the other
path the backends choose between, bench/NOTES.md) and against torch (cuDNN on CUDA, TF32 off; oneDNN on
the CPU), with each result's error against float64. Prints a Markdown table; `make gpu-check` records it
as bench/results/cuda/winograd-weight-grad.md.

    PYTHONPATH=python python bench/winograd_weight_grad.py --device cuda --batches 32
"""

import argparse
import sys

import torch

from fastdl.bench.case import true_float32
from fastdl.bench.cases import conv_layers
from fastdl.bench.timing import time_pair, with_env

MASK = [False, True, False]


def layers(names=None):
    chosen = [layer for layer in conv_layers() if layer.network in ("VGG-16", "ResNet-50")
              and layer.kernel == (3, 3) and layer.stride == (1, 1) and layer.groups == 1]
    return [layer for layer in chosen if names is None or f"{layer.network}/{layer.layer}" in names]


def weight_grad_step(mode, tile, g, x, w, padding):
    """fastdl's weight gradient through the Winograd op, its path forced by the backends' override."""
    return with_env(lambda: torch.ops.fastdl.conv2d_winograd_backward(g, x, w, padding, tile, MASK)[1],
                    "FASTDL_WINOGRAD_WEIGHT_GRAD", mode)


def torch_step(g, x, w, padding):
    return lambda: torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], padding, [1, 1], False, [0, 0], 1,
                                                       MASK)[1]


def rel_l2(got, want):
    return ((got.double() - want).norm() / want.norm()).item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="32", help="comma-separated batch sizes")
    parser.add_argument("--layers", default=None, help="comma-separated network/layer names (default: all)")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds of sampling per pair of steps")
    args = parser.parse_args(argv)
    true_float32()
    names = None if args.layers is None else set(args.layers.split(","))
    print(f"Weight gradient alone, float32, {args.device} "
          f"({torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}, torch {torch.__version__}); "
          "times in ms (median); speedups are the other side's time / Winograd's; errors are relative L2 "
          "against float64.\n")
    print("| layer | batch | direct ms | torch ms | F2 ms | F4 ms | F2 vs direct | F4 vs direct | F4 vs torch "
          "| direct err | F2 err | F4 err | torch err |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for layer in layers(names):
        for batch in (int(b) for b in args.batches.split(",")):
            gen = torch.Generator(device=args.device).manual_seed(0)
            shape = (batch, layer.in_channels, *layer.size)
            x = torch.randn(shape, device=args.device, generator=gen)
            w = torch.randn(layer.out_channels, layer.in_channels, 3, 3, device=args.device, generator=gen)
            padding = list(layer.padding)
            g = torch.randn(batch, layer.out_channels, *layer.size, device=args.device, generator=gen)
            want = torch_step(g.double(), x.double(), w.double(), padding)()
            direct = weight_grad_step("never", 4, g, x, w, padding)
            theirs = torch_step(g, x, w, padding)
            t_direct, t_torch = time_pair(direct, theirs, args.device, budget_s=args.budget)
            times, errors = {}, {"direct": rel_l2(direct(), want), "torch": rel_l2(theirs(), want)}
            for tile in (2, 4):
                ours = weight_grad_step("always", tile, g, x, w, padding)
                times[tile], _ = time_pair(ours, direct, args.device, budget_s=args.budget)
                errors[tile] = rel_l2(ours(), want)
            d, t, f2, f4 = t_direct.median_ms, t_torch.median_ms, times[2].median_ms, times[4].median_ms
            print(f"| {layer.network} {layer.layer} {layer.describe()} {layer.size[0]}x{layer.size[1]} | {batch} "
                  f"| {d:.3f} | {t:.3f} | {f2:.3f} | {f4:.3f} | {d / f2:.2f}x | {d / f4:.2f}x | {t / f4:.2f}x "
                  f"| {errors['direct']:.1e} | {errors[2]:.1e} | {errors[4]:.1e} | {errors['torch']:.1e} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
