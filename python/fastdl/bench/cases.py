"""The benchmark cases: real layer shapes of the reference networks, defined once for the runner
(python -m fastdl.bench) and the pytest-benchmark suites in bench/.

A case knows how to build its inputs and how to run one step with either implementation, so that
the two sides of every comparison run the same thing: the layer's forward alone (inference, no
autograd) or forward then backward (torch.autograd.grad, so no gradient accumulation is timed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import fastdl

MODES = ("forward", "forward+backward")


@dataclass(frozen=True)
class PoolLayer:
    """One pooling layer of a reference network; input (C, H, W) per image."""

    network: str
    layer: str
    op: str  # "max", "avg" or "adaptive"
    channels: int
    size: int
    kwargs: dict = field(default_factory=dict, hash=False, compare=False)

    def describe(self) -> str:
        name = {"max": "max_pool2d", "avg": "avg_pool2d", "adaptive": "adaptive_avg_pool2d"}[self.op]
        args = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{name}({args}) on {self.channels}x{self.size}x{self.size}"


# torchvision's AlexNet, VGG-16 and ResNet-50 at 224x224 input.
POOL_LAYERS = [
    PoolLayer("AlexNet", "features.2", "max", 64, 55, dict(kernel_size=3, stride=2)),
    PoolLayer("AlexNet", "features.5", "max", 192, 27, dict(kernel_size=3, stride=2)),
    PoolLayer("AlexNet", "features.12", "max", 256, 13, dict(kernel_size=3, stride=2)),
    PoolLayer("AlexNet", "avgpool", "adaptive", 256, 6, dict(output_size=6)),
    PoolLayer("VGG-16", "features.4", "max", 64, 224, dict(kernel_size=2, stride=2)),
    PoolLayer("VGG-16", "features.9", "max", 128, 112, dict(kernel_size=2, stride=2)),
    PoolLayer("VGG-16", "features.16", "max", 256, 56, dict(kernel_size=2, stride=2)),
    PoolLayer("VGG-16", "features.23", "max", 512, 28, dict(kernel_size=2, stride=2)),
    PoolLayer("VGG-16", "features.30", "max", 512, 14, dict(kernel_size=2, stride=2)),
    PoolLayer("VGG-16", "avgpool", "adaptive", 512, 7, dict(output_size=7)),
    PoolLayer("ResNet-50", "maxpool", "max", 64, 112, dict(kernel_size=3, stride=2, padding=1)),
    PoolLayer("ResNet-50", "avgpool", "adaptive", 2048, 7, dict(output_size=1)),
]

POOL_BATCHES = (1, 32, 128)
QUICK_POOL_LAYERS = [POOL_LAYERS[0], POOL_LAYERS[4], POOL_LAYERS[10], POOL_LAYERS[11]]

_FUNCTIONS = {
    "max": (fastdl.ops.max_pool2d, F.max_pool2d),
    "avg": (fastdl.ops.avg_pool2d, F.avg_pool2d),
    "adaptive": (fastdl.ops.adaptive_avg_pool2d, F.adaptive_avg_pool2d),
}


@dataclass
class Case:
    """One measurement: a layer at a batch size, dtype, device and mode."""

    family: str
    layer: PoolLayer
    batch: int
    dtype: torch.dtype
    device: str
    mode: str

    @property
    def id(self) -> str:
        dt = str(self.dtype).removeprefix("torch.")
        return f"{self.layer.network}/{self.layer.layer}/b{self.batch}/{dt}/{self.mode}"

    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.layer.channels, self.layer.size, self.layer.size)

    def make_inputs(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The input, and for forward+backward a gradient of the output; both sides share them."""
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(self.input_shape(), generator=gen).to(self.device, self.dtype)
        if self.mode == "forward":
            return x, None
        _, reference = _FUNCTIONS[self.layer.op]
        out_shape = reference(torch.empty(self.input_shape(), device="meta"), **self.layer.kwargs).shape
        return x.requires_grad_(), torch.randn(out_shape, generator=gen).to(self.device, self.dtype)

    def make_step(self, impl: str, inputs: tuple[torch.Tensor, torch.Tensor | None]) -> Callable[[], torch.Tensor]:
        """A zero-argument callable running one step of `impl` ("fastdl" or "torch") and returning
        its result (the output, or the input's gradient)."""
        ours, theirs = _FUNCTIONS[self.layer.op]
        fn = ours if impl == "fastdl" else theirs
        kwargs = self.layer.kwargs
        x, grad = inputs
        if grad is None:
            def step():
                with torch.no_grad():
                    return fn(x, **kwargs)
            return step

        def step():
            return torch.autograd.grad(fn(x, **kwargs), x, grad)[0]
        return step

    def bytes_moved(self) -> int:
        """The fewest bytes a step must move through memory: every tensor read or written once.
        Forward: input and output; forward+backward with max pooling adds int64 indices (written
        by forward, read by backward), grad_output and grad_input."""
        el = torch.tensor([], dtype=self.dtype).element_size()
        n_in = torch.Size(self.input_shape()).numel()
        _, reference = _FUNCTIONS[self.layer.op]
        n_out = reference(torch.empty(self.input_shape(), device="meta"), **self.layer.kwargs).numel()
        if self.mode == "forward":
            return (n_in + n_out) * el
        indices = 2 * n_out * 8 if self.layer.op == "max" else 0
        return 2 * (n_in + n_out) * el + indices


def pool_cases(device: str, dtype: torch.dtype, batches=POOL_BATCHES, quick: bool = False) -> list[Case]:
    layers = QUICK_POOL_LAYERS if quick else POOL_LAYERS
    return [Case("pool", layer, b, dtype, device, mode) for layer in layers for b in batches for mode in MODES]
