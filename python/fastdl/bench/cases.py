"""The benchmark cases: real layer shapes of the reference networks, defined once for the runner
(python -m fastdl.bench) and the pytest-benchmark suites in bench/.

The pooling, batch norm, convolution and Winograd families are here, the LSTM/GRU and whole-model
families in rnn_cases.py and model_cases.py; FAMILIES names them all. A case (case.py) builds its
inputs once and gives a step for either implementation over them, so that both sides of every
comparison run the same thing: forward alone (inference, no autograd, or a training forward for batch
norm) or forward then backward (torch.autograd.grad, so that no gradient accumulation is timed). It
also states the fewest bytes a step must move, for the bandwidth column.

Each family has a quick subset (the QUICK_* layers and batch sizes, `--quick`), sized so that all
families together take about two minutes on the 2-core dev machine.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import fastdl
from fastdl.bench.case import Case, Step, element_size, with_cudnn_tf32
from fastdl.bench.model_cases import model_cases
from fastdl.bench.rnn_cases import rnn_cases

# ---- pooling -----------------------------------------------------------------------------------------

_POOL_FUNCTIONS = {
    "max_pool2d": (fastdl.ops.max_pool2d, F.max_pool2d),
    "avg_pool2d": (fastdl.ops.avg_pool2d, F.avg_pool2d),
    "adaptive_avg_pool2d": (fastdl.ops.adaptive_avg_pool2d, F.adaptive_avg_pool2d),
}


@dataclass
class PoolLayer:
    """One pooling layer of a reference network; input (C, H, W) per image."""

    network: str
    layer: str
    op: str
    channels: int
    size: int
    kwargs: dict = field(default_factory=dict)


# torchvision's AlexNet, VGG-16 and ResNet-50 at 224x224 input.
POOL_LAYERS = [
    PoolLayer("AlexNet", "features.2", "max_pool2d", 64, 55, dict(kernel_size=3, stride=2)),
    PoolLayer("AlexNet", "features.5", "max_pool2d", 192, 27, dict(kernel_size=3, stride=2)),
    PoolLayer("AlexNet", "features.12", "max_pool2d", 256, 13, dict(kernel_size=3, stride=2)),
    PoolLayer("AlexNet", "avgpool", "adaptive_avg_pool2d", 256, 6, dict(output_size=6)),
    PoolLayer("VGG-16", "features.4", "max_pool2d", 64, 224, dict(kernel_size=2, stride=2)),
    PoolLayer("VGG-16", "features.9", "max_pool2d", 128, 112, dict(kernel_size=2, stride=2)),
    PoolLayer("VGG-16", "features.16", "max_pool2d", 256, 56, dict(kernel_size=2, stride=2)),
    PoolLayer("VGG-16", "features.23", "max_pool2d", 512, 28, dict(kernel_size=2, stride=2)),
    PoolLayer("VGG-16", "features.30", "max_pool2d", 512, 14, dict(kernel_size=2, stride=2)),
    PoolLayer("VGG-16", "avgpool", "adaptive_avg_pool2d", 512, 7, dict(output_size=7)),
    PoolLayer("ResNet-50", "maxpool", "max_pool2d", 64, 112, dict(kernel_size=3, stride=2, padding=1)),
    PoolLayer("ResNet-50", "avgpool", "adaptive_avg_pool2d", 2048, 7, dict(output_size=1)),
]
POOL_BATCHES = (1, 32, 128)
QUICK_POOL_BATCHES = (1, 8)
POOL_MODES = ("forward", "forward+backward")
QUICK_POOL_LAYERS = [POOL_LAYERS[0], POOL_LAYERS[4], POOL_LAYERS[10], POOL_LAYERS[11]]


@dataclass
class PoolCase(Case):
    kwargs: dict = field(default_factory=dict)

    def _output_numel(self) -> int:
        _, reference = _POOL_FUNCTIONS[self.op.split("(")[0]]
        return reference(torch.empty(self.shape, device="meta"), **self.kwargs).numel()

    def make_inputs(self) -> dict:
        x = self.random(self.shape, 0)
        if self.mode == "forward":
            return {"x": x}
        _, reference = _POOL_FUNCTIONS[self.op.split("(")[0]]
        out_shape = reference(torch.empty(self.shape, device="meta"), **self.kwargs).shape
        return {"x": x.requires_grad_(), "grad": self.random(out_shape, 1)}

    def make_step(self, impl: str, inputs: dict) -> Step:
        ours, theirs = _POOL_FUNCTIONS[self.op.split("(")[0]]
        fn = ours if impl == "fastdl" else theirs
        x, kwargs = inputs["x"], self.kwargs
        if self.mode == "forward":
            def step():
                with torch.no_grad():
                    return fn(x, **kwargs)
            return step
        grad = inputs["grad"]
        return lambda: torch.autograd.grad(fn(x, **kwargs), x, grad)[0]

    def bytes_moved(self) -> int:
        """Forward: input and output once each; forward+backward adds grad_output and grad_input
        and, for max pooling, int64 indices written by forward and read by backward."""
        el, n_in, n_out = element_size(self.dtype), torch.Size(self.shape).numel(), self._output_numel()
        if self.mode == "forward":
            return (n_in + n_out) * el
        indices = 2 * n_out * 8 if self.op.startswith("max") else 0
        return 2 * (n_in + n_out) * el + indices


def pool_cases(device: str, dtype: torch.dtype, batches=None, quick: bool = False) -> list[Case]:
    layers = QUICK_POOL_LAYERS if quick else POOL_LAYERS
    out = []
    for layer in layers:
        args = ", ".join(f"{k}={v}" for k, v in layer.kwargs.items())
        for b in batches or (QUICK_POOL_BATCHES if quick else POOL_BATCHES):
            for mode in POOL_MODES:
                out.append(PoolCase("pool", layer.network, layer.layer, f"{layer.op}({args})", b,
                                    (b, layer.channels, layer.size, layer.size), dtype, device, mode,
                                    exact=layer.op == "max_pool2d", kwargs=layer.kwargs))
    return out


# ---- batch normalization -------------------------------------------------------------------------------

# The distinct batch norm shapes (C, H=W) of torchvision's ResNet-50 at 224x224 input.
RESNET50_BN = [(64, 112), (64, 56), (256, 56), (128, 28), (512, 28), (256, 14), (1024, 14), (512, 7), (2048, 7)]
BN_BATCHES = (32, 128)
QUICK_BN_BATCHES = (8, 32)
# (N, C) features, as after global pooling or in a classifier head.
BN_FEATURES = [(32, 512), (256, 2048), (1024, 4096)]
BN_MODES = ("train forward", "train forward+backward", "eval forward")
QUICK_RESNET50_BN = [(64, 56), (1024, 14), (2048, 7)]


@dataclass
class BatchNormCase(Case):
    def make_inputs(self) -> dict:
        C = self.shape[1]
        inputs = {"x": self.random(self.shape, 0) * 2 + 1, "weight": self.random((C,), 2), "bias": self.random((C,), 3),
                  "running_mean": torch.zeros(C, device=self.device, dtype=self.dtype),
                  "running_var": torch.ones(C, device=self.device, dtype=self.dtype)}
        if self.mode == "train forward+backward":
            for name in ("x", "weight", "bias"):
                inputs[name].requires_grad_()
            inputs["grad"] = self.random(self.shape, 1)
        return inputs

    def make_step(self, impl: str, inputs: dict) -> Step:
        fn = fastdl.ops.batch_norm if impl == "fastdl" else F.batch_norm
        x, w, b, rm, rv = (inputs[k] for k in ("x", "weight", "bias", "running_mean", "running_var"))
        training = self.mode != "eval forward"
        if self.mode != "train forward+backward":
            def step():
                with torch.no_grad():
                    return fn(x, rm, rv, w, b, training, 0.1, 1e-5)
            return step
        grad = inputs["grad"]
        return lambda: torch.autograd.grad(fn(x, rm, rv, w, b, True, 0.1, 1e-5), (x, w, b), grad)[0]

    def bytes_moved(self) -> int:
        """Passes over a tensor of the input's size that the step cannot avoid: eval reads x and writes
        y; training first reads x for the statistics (3 passes); backward reads dy and x for the sums,
        then dy and x again and writes dx (5 more)."""
        passes = {"eval forward": 2, "train forward": 3, "train forward+backward": 8}[self.mode]
        return passes * torch.Size(self.shape).numel() * element_size(self.dtype)


def bn_cases(device: str, dtype: torch.dtype, batches=None, quick: bool = False) -> list[Case]:
    out = []
    for C, size in QUICK_RESNET50_BN if quick else RESNET50_BN:
        for b in batches or (QUICK_BN_BATCHES if quick else BN_BATCHES):
            for mode in BN_MODES:
                out.append(BatchNormCase("bn", "ResNet-50", f"bn {C}x{size}x{size}", f"batch_norm on {C}x{size}x{size}",
                                         b, (b, C, size, size), dtype, device, mode))
    for n, C in BN_FEATURES[:1] if quick else BN_FEATURES:
        for mode in BN_MODES:
            out.append(BatchNormCase("bn", "features", f"bn1d {C}", f"batch_norm on ({n}, {C})", n, (n, C), dtype,
                                     device, mode))
    return out


# ---- convolution -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvLayer:
    """One convolution of a reference network: weight (K, C/groups, R, S) on (C, H, W) images."""

    network: str
    layer: str
    in_channels: int
    out_channels: int
    size: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    bias: bool

    @property
    def kwargs(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, groups=self.groups)

    def describe(self) -> str:
        k, s, p = (f"{a}x{b}" if a != b else str(a) for a, b in (self.kernel, self.stride, self.padding))
        return f"conv2d({self.in_channels}->{self.out_channels}, {k}, stride {s}, pad {p})"


def _lenet5() -> torch.nn.Module:
    """LeNet-5's convolutions on a 32x32 image: C1 (6@5x5), subsampling, C3 (16@5x5)."""
    layers = [("C1", torch.nn.Conv2d(1, 6, 5)), ("tanh", torch.nn.Tanh()), ("S2", torch.nn.AvgPool2d(2)),
              ("C3", torch.nn.Conv2d(6, 16, 5))]
    return torch.nn.Sequential(collections.OrderedDict(layers))


def conv_layers() -> list[ConvLayer]:
    """The distinct convolutions of LeNet-5, torchvision's AlexNet, VGG-16 and ResNet-50 (224x224),
    read off the models by running them on the meta device; each shape once, named by its first use."""
    import torchvision

    nets = [("LeNet-5", _lenet5, 32, 1), ("AlexNet", torchvision.models.alexnet, 224, 3),
            ("VGG-16", torchvision.models.vgg16, 224, 3), ("ResNet-50", torchvision.models.resnet50, 224, 3)]
    layers: list[ConvLayer] = []
    for network, build, size, channels in nets:
        with torch.device("meta"):
            model = build()
        seen: dict = {}

        def record(module, args, out, name):
            x = args[0]
            layer = ConvLayer(network, name, module.in_channels, module.out_channels, tuple(x.shape[-2:]),
                              module.kernel_size, module.stride, module.padding, module.groups,
                              module.bias is not None)
            seen.setdefault(dataclasses.replace(layer, layer=""), layer)

        hooks = [m.register_forward_hook(functools.partial(record, name=name))
                 for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
        with torch.no_grad():
            model.eval()(torch.empty(1, channels, size, size, device="meta"))
        for h in hooks:
            h.remove()
        layers += seen.values()
    return layers


CONV_BATCHES = {"cpu": (1, 8, 32), "cuda": (1, 8, 32, 128)}
CONV_MODES = ("forward", "forward+backward")
QUICK_CONV_LAYERS = ["LeNet-5/C3", "AlexNet/features.3", "VGG-16/features.0", "ResNet-50/layer1.0.conv2",
                     "ResNet-50/layer3.1.conv1", "ResNet-50/layer4.1.conv2"]
QUICK_CONV_BATCHES = (1, 8)


@dataclass
class ConvCase(Case):
    conv: ConvLayer | None = None
    algorithm: str = "auto"  # fastdl.ops.conv2d's
    # The image, weight and grad_output channels-last (so the output and gradients), as a model after
    # model.to(memory_format=torch.channels_last), which converts 4-D parameters too.
    channels_last: bool = False

    @property
    def id(self) -> str:
        return (super().id + ("" if self.algorithm == "auto" else f"/{self.algorithm}")
                + ("/channels_last" if self.channels_last else ""))

    def layout(self, t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t

    def make_inputs(self) -> dict:
        c = self.conv
        w = self.random((c.out_channels, c.in_channels // c.groups, *c.kernel), 1) / (c.in_channels * c.kernel[0] * c.kernel[1]) ** 0.5
        inputs = {"x": self.layout(self.random(self.shape, 0)), "weight": self.layout(w),
                  "bias": self.random((c.out_channels,), 2) if c.bias else None}
        if self.mode == "forward+backward":
            # Training needs no gradient for the image itself: a first layer computes only its weight's.
            wants = ["weight"] + (["bias"] if c.bias else []) + ([] if self.first_layer else ["x"])
            for name in wants:
                inputs[name].requires_grad_()
            inputs["wants"] = wants
            with torch.device("meta"):
                out = F.conv2d(torch.empty(self.shape), torch.empty(w.shape), **c.kwargs)
            inputs["grad"] = self.layout(self.random(out.shape, 3))
        return inputs

    @property
    def first_layer(self) -> bool:
        return self.conv.in_channels <= 3

    def make_step(self, impl: str, inputs: dict) -> Step:
        c, x, w, b = self.conv, inputs["x"], inputs["weight"], inputs["bias"]
        conv = functools.partial(fastdl.ops.conv2d, algorithm=self.algorithm) if impl == "fastdl" else F.conv2d

        def fn():
            return conv(x, w, b, **c.kwargs)

        if self.mode == "forward":
            def step():
                with torch.no_grad():
                    return fn()
        else:
            grad, wants = inputs["grad"], [inputs[name] for name in inputs["wants"]]

            def step():
                return torch.autograd.grad(fn(), wants, grad)
        return with_cudnn_tf32(step) if impl == "torch" and self.baseline == "cuDNN TF32" else step

    def reference_step(self, inputs: dict) -> Step:
        """On CUDA in float32 (the only place with TF32 baselines): torch in float64, on float64 copies of
        the inputs. cuDNN's own float32 weight gradient of AlexNet's 5x5 layer was 5e-3 of its largest value
        off the float64 result on an H100 (TF32 off; fastdl's 4e-7), beyond the check's 1e-4 (bench/NOTES.md,
        GPU 1); a TF32 result would be further off still."""
        if self.device != "cuda" or self.dtype != torch.float32:
            return super().reference_step(inputs)
        exact = {name: v.detach().double().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v
                 for name, v in inputs.items()}
        return dataclasses.replace(self, baseline="cuDNN").make_step("torch", exact)

    def flops(self) -> int:
        """2 x multiply-adds of the direct convolution's forward; forward+backward adds one such
        convolution per gradient of the input and of the weight (the bias gradient is a sum, not
        counted). Winograd algorithms are credited with the direct convolution's count, so that rates
        compare across algorithms."""
        c = self.conv
        with torch.device("meta"):
            out = F.conv2d(torch.empty(self.shape), torch.empty(c.out_channels, c.in_channels // c.groups,
                                                                    *c.kernel), **c.kwargs)
        macs = out.numel() * (c.in_channels // c.groups) * c.kernel[0] * c.kernel[1]
        if self.mode == "forward":
            return 2 * macs
        return 2 * macs * (2 if self.first_layer else 3)


def conv_cases(device: str, dtype: torch.dtype, batches=None, quick: bool = False,
               channels_last: bool = False) -> list[Case]:
    layers = conv_layers()
    if quick:
        layers = [layer for layer in layers if f"{layer.network}/{layer.layer}" in QUICK_CONV_LAYERS]
    baselines = ["cuDNN", "cuDNN TF32"] if device == "cuda" and dtype == torch.float32 else ["torch"]
    out = []
    for layer in layers:
        for b in batches or (QUICK_CONV_BATCHES if quick else CONV_BATCHES[device]):
            for mode in CONV_MODES:
                for baseline in baselines:
                    out.append(ConvCase("conv", layer.network, layer.layer, layer.describe(), b,
                                        (b, layer.in_channels, *layer.size), dtype, device, mode,
                                        baseline=baseline, conv=layer, channels_last=channels_last))
    return out


# ---- Winograd convolution -----------------------------------------------------------------------------

WINOGRAD_ALGORITHMS = ("direct", "winograd2", "winograd4")
QUICK_WINOGRAD_LAYERS = ["VGG-16/features.12", "VGG-16/features.19", "VGG-16/features.24", "ResNet-50/layer1.0.conv2"]
QUICK_WINOGRAD_BATCHES = (1,)


def winograd_cases(device: str, dtype: torch.dtype, batches=None, quick: bool = False,
                   channels_last: bool = False) -> list[Case]:
    """Every 3x3 stride-1 convolution of VGG-16 and ResNet-50, each fastdl algorithm against torch
    (GFLOP/s count the direct convolution's multiply-adds, so they compare across algorithms); on the
    CPU also AlexNet's 5x5 layer, direct and F(2x2,5x5) ('winograd2')."""
    def wanted(layer: ConvLayer) -> bool:
        if layer.stride != (1, 1) or layer.groups != 1:
            return False
        if layer.kernel == (5, 5):
            return device == "cpu" and layer.network == "AlexNet"
        return layer.kernel == (3, 3) and layer.network in ("VGG-16", "ResNet-50")

    layers = [layer for layer in conv_layers() if wanted(layer)]
    if quick:
        layers = [layer for layer in layers if f"{layer.network}/{layer.layer}" in QUICK_WINOGRAD_LAYERS]
    baselines = ["cuDNN", "cuDNN TF32"] if device == "cuda" and dtype == torch.float32 else ["torch"]
    return [ConvCase("winograd", layer.network, layer.layer, f"{layer.describe()} {algorithm}", b,
                     (b, layer.in_channels, *layer.size), dtype, device, mode, baseline=baseline, conv=layer,
                     algorithm=algorithm, channels_last=channels_last)
            for layer in layers
            for b in batches or (QUICK_WINOGRAD_BATCHES if quick else CONV_BATCHES[device])
            for mode in CONV_MODES
            for baseline in baselines
            for algorithm in (WINOGRAD_ALGORITHMS if layer.kernel == (3, 3) else WINOGRAD_ALGORITHMS[:2])]


# The families whose cases take channels_last (the runner's --channels-last).
CHANNELS_LAST_FAMILIES = ("conv", "winograd")

FAMILIES = {"pool": pool_cases, "bn": bn_cases, "conv": conv_cases, "winograd": winograd_cases, "rnn": rnn_cases,
            "models": model_cases}
