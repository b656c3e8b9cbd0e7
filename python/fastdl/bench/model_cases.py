"""Whole reference models (the `models` family of fastdl.bench): fastdl.models' networks converted
with fastdl.convert against the same stock torch.nn model, their parameters and buffers shared. An
inference step (eval, no autograd) and a training step (train mode, forward, cross-entropy
against fixed labels, the gradients of every parameter; no optimizer). Dropout is off in the
training step, since its random masks would differ between the two sides.

The runner's check compares the logits (inference) and the loss (training step), not the
gradients: in float32 a whole network's gradients differ from torch's by more than the check's
1e-4, as torch's own differ from a float64 reference (a ReLU input rounded across zero routes a
gradient elsewhere; batch statistics over a few values amplify rounding). tests/test_models.py
checks them against float64 instead.

Sizes: each model at its natural input (LeNet-5 32x32, the MNIST CNN 28x28, the ImageNet models
224x224, the row classifiers 28 rows of 28, the character LM 64 steps, the tagger 32), on the CPU
at batch 1, 8 and 64 (the ImageNet models at batch 1 only), on the GPU at 32, 64 and 128. --quick:
LeNet-5, ResNet-18, VGG-16 and the LSTM classifier at batch 8 (the GPU: 32), the ImageNet models at
32x32 on the CPU (digits resized, as a small training run would). On the GPU torch runs in true
float32 (cuDNN's TF32 off), as fastdl does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import fastdl
from fastdl import models
from fastdl.bench.case import Case, Step

MODEL_MODES = ("inference", "training step")
# registry name -> (label, CPU batches)
BENCH_MODELS = {
    "lenet5": ("LeNet-5", (1, 8, 64)),
    "mnist_cnn": ("MNIST CNN", (1, 8, 64)),
    "alexnet": ("AlexNet", (1,)),
    "vgg16": ("VGG-16", (1,)),
    "resnet18": ("ResNet-18", (1,)),
    "resnet50": ("ResNet-50", (1,)),
    "googlenet": ("GoogLeNet", (1,)),
    "lstm_classifier": ("LSTM rows", (1, 8, 64)),
    "gru_classifier": ("GRU rows", (1, 8, 64)),
    "char_lstm": ("char LSTM", (1, 8)),
    "bilstm_tagger": ("BiLSTM tag", (8,)),
}
GPU_BATCHES = (32, 64, 128)
QUICK_MODELS = ("lenet5", "resnet18", "vgg16", "lstm_classifier")
QUICK_BATCH = {"cpu": 8, "cuda": 32}
QUICK_CPU_IMAGENET_SIZE = 32
NUM_CLASSES = 10  # classes, vocabulary (the LM) or tags


@dataclass
class ModelCase(Case):
    model: str = ""  # the fastdl.models name
    size: int = 0  # image side or sequence length

    def _models(self) -> dict:
        torch.manual_seed(0)
        stock = models.create(self.model, NUM_CLASSES).to(self.device, self.dtype)
        shared = {id(t): t for t in (*stock.parameters(), *stock.buffers())}
        converted = fastdl.convert(copy.deepcopy(stock, shared))
        for m in (stock, converted):
            m.train(self.mode == "training step")
            for dropout in (d for d in m.modules() if isinstance(d, torch.nn.Dropout)):
                dropout.eval()
        return {"torch": stock, "fastdl": converted}

    def make_inputs(self) -> dict:
        modules = self._models()
        gen = torch.Generator().manual_seed(0)
        x = models.random_input(self.model, modules["torch"], self.batch, self.size, gen).to(self.device)
        x = x.to(self.dtype) if x.is_floating_point() else x
        per_step = models.spec(self.model).kind in ("lm", "tagger")
        labels = torch.randint(0, NUM_CLASSES, (self.batch, self.size) if per_step else (self.batch,), generator=gen)
        return {"x": x, "labels": labels.to(self.device), "modules": modules}

    def make_step(self, impl: str, inputs: dict) -> Step:
        model, x, labels = inputs["modules"][impl], inputs["x"], inputs["labels"]
        if self.mode == "inference":
            def step():
                with torch.no_grad():
                    return model(x)
            return step
        params = list(model.parameters())

        def step():
            value = loss(model(x), labels)
            torch.autograd.grad(value, params)
            return value.detach()
        return step

    def flops(self) -> int:
        """Floating-point operations of the stock model's matrix products and convolutions as
        torch's FlopCounterMode counts them (a training step: forward and backward)."""
        with torch.device("meta"):
            model = models.create(self.model, NUM_CLASSES).train(self.mode == "training step")
            x = models.random_input(self.model, model, self.batch, self.size)
            with FlopCounterMode(display=False) as counter:
                out = model(x)
                if self.mode == "training step":
                    torch.autograd.grad(out.sum(), list(model.parameters()))
        return counter.get_total_flops()


def input_shape(name: str, batch: int, size: int) -> tuple[int, ...]:
    with torch.device("meta"):
        return tuple(models.random_input(name, models.create(name, NUM_CLASSES), batch, size).shape)


def trains_at(name: str, batch: int, size: int) -> bool:
    """Whether a training step can run: batch norm needs more than one value per channel (ResNet at
    32x32 ends in 1x1 maps, so batch 1 cannot train it)."""
    with torch.device("meta"):
        model = models.create(name, NUM_CLASSES).train()
        try:
            model(models.random_input(name, model, batch, size))
        except ValueError:
            return False
    return True


def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (N, classes) or per-step (N, T, classes) logits."""
    return F.cross_entropy(logits.flatten(0, -2), labels.flatten())


def model_cases(device: str, dtype: torch.dtype, batches=None, quick: bool = False) -> list[Case]:
    out = []
    for name, (label, cpu_batches) in BENCH_MODELS.items():
        if quick and name not in QUICK_MODELS:
            continue
        size = models.spec(name).input_size
        if quick and device == "cpu" and size == 224:
            size = QUICK_CPU_IMAGENET_SIZE
        layer = f"{size}x{size}" if models.spec(name).kind == "image" else f"T{size}"
        for b in batches or ((QUICK_BATCH[device],) if quick else GPU_BATCHES if device == "cuda" else cpu_batches):
            for mode in MODEL_MODES if trains_at(name, b, size) else MODEL_MODES[:1]:
                out.append(ModelCase("models", label, layer, models.spec(name).summary, b, input_shape(name, b, size),
                                     dtype, device, mode, model=name, size=size))
    return out
