"""The reference models of the source documents, built from stock torch.nn layers (so that
fastdl.convert(model) runs them on fastdl's kernels), by name:

    model = fastdl.models.create("resnet18", num_classes=10, in_channels=1)
    fastdl.convert(model)
    x = fastdl.models.random_input("resnet18", model, batch=8, size=32)

Image models take (N, C, H, W) and return (N, num_classes) logits; the ImageNet ones (AlexNet,
VGG, ResNet, GoogLeNet) end in adaptive average pooling, so they also take small inputs (digits
resized to 32x32 or 64x64). Their layer shapes and state_dict keys are torchvision's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fastdl.models.googlenet import GoogLeNet
from fastdl.models.lenet import LeNet5, MnistCNN
from fastdl.models.resnet import ResNet
from fastdl.models.rnn import BiLSTMTagger, CharLM, SequenceClassifier
from fastdl.models.vgg import VGG, AlexNet

KINDS = ("image", "sequence", "lm", "tagger")


@dataclass(frozen=True)
class ModelSpec:
    """What a registered model takes and returns.

    kind "image": (N, C, S, S) float images -> (N, num_classes); S = input_size naturally, any
      S >= small_input_size for the ImageNet models (LeNet-5 and the MNIST CNN take only theirs).
    kind "sequence": (N, T, I) float rows (or (N, C, H, W) images, T = H, I = C*W), or (N, T) int64
      ids when created with vocab_size -> (N, num_classes); T = input_size rows naturally.
    kind "lm": (N, T) int64 ids -> (N, T, V) next-token logits; num_classes is the vocabulary V.
    kind "tagger": (N, T) int64 ids -> (N, T, num_classes) tag logits.
    For the last three, input_size and small_input_size are sequence lengths T.
    in_channels: the image channels a model is created with by default (None: not an image model).
    """

    name: str
    kind: str
    build: Callable[..., nn.Module]
    input_size: int
    small_input_size: int
    in_channels: int | None
    summary: str


_SPECS = [
    ModelSpec("lenet5", "image", LeNet5, 32, 32, 1, "LeNet-5: tanh, average-pool subsampling"),
    ModelSpec("mnist_cnn", "image", MnistCNN, 28, 28, 1, "the book's MNIST CNN: 2 conv 5x5 + dense 1024"),
    ModelSpec("alexnet", "image", AlexNet, 224, 64, 3, "AlexNet (torchvision's single-stream widths)"),
    ModelSpec("vgg11", "image", functools.partial(VGG, 11), 224, 32, 3, "VGG-11"),
    ModelSpec("vgg11_bn", "image", functools.partial(VGG, 11, batch_norm=True), 224, 32, 3, "VGG-11 with batch norm"),
    ModelSpec("vgg16", "image", functools.partial(VGG, 16), 224, 32, 3, "VGG-16"),
    ModelSpec("vgg16_bn", "image", functools.partial(VGG, 16, batch_norm=True), 224, 32, 3, "VGG-16 with batch norm"),
    ModelSpec("resnet18", "image", functools.partial(ResNet, 18), 224, 32, 3, "ResNet-18"),
    ModelSpec("resnet34", "image", functools.partial(ResNet, 34), 224, 32, 3, "ResNet-34"),
    ModelSpec("resnet50", "image", functools.partial(ResNet, 50), 224, 32, 3, "ResNet-50 (bottleneck blocks)"),
    ModelSpec("googlenet", "image", GoogLeNet, 224, 32, 3,
              "GoogLeNet / Inception v1 (5x5 branches; large_kernel=3: torchvision's 3x3)"),
    ModelSpec("lstm_classifier", "sequence", functools.partial(SequenceClassifier, cell="lstm"), 28, 8, None,
              "LSTM over image rows (or token embeddings) -> class"),
    ModelSpec("gru_classifier", "sequence", functools.partial(SequenceClassifier, cell="gru"), 28, 8, None,
              "GRU over image rows (or token embeddings) -> class"),
    ModelSpec("char_lstm", "lm", functools.partial(CharLM, cell="lstm"), 64, 4, None,
              "character-level language model, 2-layer LSTM"),
    ModelSpec("char_gru", "lm", functools.partial(CharLM, cell="gru"), 64, 4, None,
              "character-level language model, 2-layer GRU"),
    ModelSpec("bilstm_tagger", "tagger", BiLSTMTagger, 32, 4, None, "bidirectional LSTM tagger: a tag per token"),
]
SPECS = {s.name: s for s in _SPECS}


def names() -> list[str]:
    """The registered model names."""
    return list(SPECS)


def spec(name: str) -> ModelSpec:
    if name not in SPECS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(SPECS)}")
    return SPECS[name]


def create(name: str, num_classes: int = 10, in_channels: int | None = None, **kwargs) -> nn.Module:
    """A freshly initialized model by name. num_classes: classes (image, sequence), vocabulary size
    (lm) or tags (tagger). in_channels: image channels, only for image models (default the spec's).
    Other keyword arguments go to the model's constructor."""
    s = spec(name)
    if in_channels is not None:
        if s.in_channels is None:
            raise TypeError(f"{name} is a {s.kind} model and takes no in_channels")
        kwargs["in_channels"] = in_channels
    return s.build(num_classes, **kwargs)


def random_input(name: str, model: nn.Module, batch: int = 2, size: int | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
    """A random input that `model` (created as `name`) takes, on the CPU: images of side `size`,
    or `size` steps (default the spec's input_size)."""
    s = spec(name)
    size = size or s.input_size
    vocab_size = getattr(model, "vocab_size", None)
    if vocab_size is not None:
        return torch.randint(0, vocab_size, (batch, size), generator=generator)
    if s.kind == "image":
        return torch.randn(batch, model.in_channels, size, size, generator=generator)
    return torch.randn(batch, size, model.rnn.input_size, generator=generator)


__all__ = ["VGG", "AlexNet", "BiLSTMTagger", "CharLM", "GoogLeNet", "KINDS", "LeNet5", "MnistCNN", "ModelSpec",
           "ResNet", "SPECS", "SequenceClassifier", "create", "names", "random_input", "spec"]
