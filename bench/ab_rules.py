"""Both sides of fastdl's automatic CUDA path choices that were written without a GPU, side by side in
one run, to set or confirm their rules (bench/NOTES.md):

- conv: forward and grad_input reductions split when tiles are few (FASTDL_CONV_SPLIT=never turns it
  off), on the wide layers of small batches: ResNet-50's layer4 3x3 and layer3 1x1, AlexNet's 5x5;
- rnn: LSTM/GRU steps in the small-batch kernel, all steps of a layer in one persistent launch
  (shipped at batch <= 16; here forced on with FASTDL_RNN_SMALL_BATCH=always, up to the kernel's 64,
  against =never: cuBLAS and the cell kernel per step), hidden 256, 50 steps, batch 1 to 64;
- winograd fused: the CUDA Winograd forward and input gradient in one kernel (csrc/cuda/winograd_fused.cu,
  FASTDL_WINOGRAD_FUSED=always) against the staged kernels (=never, the shipped default until this
  table says otherwise), on the 3x3 layers of VGG-16 and ResNet-50 (forward with each tile, and
  forward+backward with F(4x4,3x3));
- winograd: on CUDA 'auto' takes Winograd for maps under 14x14 (ResNet-50's 7x7) from batch 8 only
  (fastdl/ops/conv.py, winograd_rule): each algorithm's time on ResNet-50's 7x7 and 14x14 3x3 layers,
  a second table.

Each row: fastdl with the rule, fastdl without it, torch (cuDNN, TF32 off), in ms (medians of
interleaved samples), and the ratios. Prints Markdown; `make gpu-check` records it as
bench/results/cuda/ab-rules.md. Runs on the CPU too (where neither rule exists: both sides equal).

    PYTHONPATH=python python bench/ab_rules.py --device cuda
"""

import argparse
import sys

import torch
import torch.nn.functional as F

import fastdl
from fastdl.bench.case import true_float32
from fastdl.bench.cases import conv_layers
from fastdl.bench.timing import time_pair, with_env

CONV_LAYERS = ["ResNet-50/layer4.1.conv2", "ResNet-50/layer3.1.conv1", "AlexNet/features.3"]
WINOGRAD_MAP_LAYERS = ["ResNet-50/layer4.1.conv2", "ResNet-50/layer3.1.conv2"]
WINOGRAD_FUSED_LAYERS = ["VGG-16/features.12", "VGG-16/features.19", "VGG-16/features.24", "ResNet-50/layer1.0.conv2",
                         "ResNet-50/layer2.1.conv2", "ResNet-50/layer3.1.conv2", "ResNet-50/layer4.1.conv2"]


def conv_steps(layer, batch, device, backward, algorithm="direct"):
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, layer.in_channels, *layer.size, device=device, generator=gen)
    w = torch.randn(layer.out_channels, layer.in_channels // layer.groups, *layer.kernel, device=device,
                    generator=gen)
    b = torch.randn(layer.out_channels, device=device, generator=gen)
    if backward:
        x.requires_grad_()
        w.requires_grad_()
        b.requires_grad_()
    y = F.conv2d(x, w, b, **layer.kwargs)
    g = torch.randn_like(y)

    def run(fn):
        def step():
            out = fn(x, w, b, **layer.kwargs)
            if backward:
                torch.autograd.grad(out, (x, w, b), g)
            return out
        return step
    ours = run(lambda *a, **k: fastdl.ops.conv2d(*a, **k, algorithm=algorithm))
    return ours, run(F.conv2d)


def rnn_steps(kind, batch, device, training):
    torch.manual_seed(0)
    theirs = getattr(torch.nn, kind)(256, 256).to(device)
    ours = getattr(fastdl.nn, kind)(256, 256).to(device)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(50, batch, 256, device=device, requires_grad=training)
    for m in (ours, theirs):
        m.train(training)

    def run(module):
        def step():
            if not training:
                with torch.no_grad():
                    return module(x)[0]
            out = module(x)[0]
            torch.autograd.grad(out.sum(), [x, *module.parameters()])
            return out
        return step
    return run(ours), run(theirs)


def row(name, ours, theirs, variable, device, budget, on=None):
    """on: the override value that forces the path on, or None for the shipped rule."""
    with_rule, without = time_pair(with_env(ours, variable, on) if on else ours, with_env(ours, variable, "never"),
                                   device, budget_s=budget)
    _, torch_time = time_pair(ours, theirs, device, budget_s=budget)
    a, b, t = with_rule.median_ms, without.median_ms, torch_time.median_ms
    print(f"| {name} | {a:.3f} | {b:.3f} | {t:.3f} | {b / a:.2f}x | {t / a:.2f}x | {t / b:.2f}x |")
    sys.stdout.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget", type=float, default=0.3, help="seconds of sampling per pair of steps")
    parser.add_argument("--conv-batches", default="1,8")
    parser.add_argument("--rnn-batches", default="1,8,16,32,64")
    parser.add_argument("--winograd-batches", default="8,32,128")
    parser.add_argument("--fused-batches", default="32")
    args = parser.parse_args(argv)
    true_float32()
    print(f"fastdl's CUDA path rules, float32, {args.device} "
          f"({torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}, torch {torch.__version__}); "
          "ms (medians); 'rule' = fastdl as shipped (rnn rows: the small-batch kernel forced on with "
          "FASTDL_RNN_SMALL_BATCH=always, the shipped path up to batch 16; winograd fused rows: the fused kernel "
          "forced on with FASTDL_WINOGRAD_FUSED=always, shipped off), 'off' = the rule's override set to never.\n")
    print("| case | rule ms | off ms | torch ms | off / rule | torch / rule | torch / off |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    layers = {f"{layer.network}/{layer.layer}": layer for layer in conv_layers()}
    for name in CONV_LAYERS:
        layer = layers[name]
        for batch in (int(b) for b in args.conv_batches.split(",") if b):
            for backward in (False, True):
                ours, theirs = conv_steps(layer, batch, args.device, backward)
                mode = "forward+backward" if backward else "forward"
                row(f"conv {name} {layer.describe()} b{batch} {mode}", ours, theirs, "FASTDL_CONV_SPLIT",
                    args.device, args.budget)
    for kind in ("LSTM", "GRU"):
        for batch in (int(b) for b in args.rnn_batches.split(",") if b):
            for training in (False, True):
                ours, theirs = rnn_steps(kind, batch, args.device, training)
                mode = "training" if training else "inference"
                row(f"rnn {kind} h256 T50 b{batch} {mode}", ours, theirs, "FASTDL_RNN_SMALL_BATCH", args.device,
                    args.budget, on="always")
    for name in WINOGRAD_FUSED_LAYERS:
        layer = layers[name]
        for batch in (int(b) for b in args.fused_batches.split(",") if b):
            for algorithm, backward in (("winograd2", False), ("winograd4", False), ("winograd4", True)):
                ours, theirs = conv_steps(layer, batch, args.device, backward, algorithm)
                mode = "forward+backward" if backward else "forward"
                row(f"winograd fused {name} {layer.describe()} {algorithm} b{batch} {mode}", ours, theirs,
                    "FASTDL_WINOGRAD_FUSED", args.device, args.budget, on="always")
    winograd_maps(args.device, args.budget, [int(b) for b in args.winograd_batches.split(",") if b])


def winograd_maps(device, budget, batches):
    """Each algorithm on ResNet-50's 3x3 layers with 7x7 and 14x14 maps (one table)."""
    print("\n| case | direct ms | winograd2 ms | winograd4 ms | torch ms | auto picks | torch / best |")
    print("|---|---:|---:|---:|---:|---|---:|")
    layers = {f"{layer.network}/{layer.layer}": layer for layer in conv_layers()}
    for name in WINOGRAD_MAP_LAYERS:
        layer = layers[name]
        for batch in batches:
            for backward in (False, True):
                times = {}
                for algorithm in ("direct", "winograd2", "winograd4"):
                    ours, theirs = conv_steps(layer, batch, device, backward, algorithm)
                    mine, ref = time_pair(ours, theirs, device, budget_s=budget)
                    times[algorithm], times["torch"] = mine.median_ms, ref.median_ms
                out_size = [(n + 2 * p - k) // st + 1 for n, p, k, st in zip(layer.size, layer.padding, layer.kernel,
                                                                               layer.stride)]
                pick = fastdl.ops.conv.winograd_rule(device, batch, min(layer.in_channels, layer.out_channels),
                                                     *out_size)
                best = min(times[a] for a in ("direct", "winograd2", "winograd4"))
                mode = "forward+backward" if backward else "forward"
                print(f"| {name} {layer.describe()} b{batch} {mode} | {times['direct']:.3f} | {times['winograd2']:.3f} | "
                      f"{times['winograd4']:.3f} | {times['torch']:.3f} | {pick} | {times['torch'] / best:.2f}x |")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
