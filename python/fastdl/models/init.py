"""The initialization of the ImageNet CNNs (AlexNet, VGG, ResNet, GoogLeNet)."""

from __future__ import annotations

from torch import nn


def init_cnn_weights(model: nn.Module) -> None:
    """Kaiming-normal convolutions for the ReLUs that follow them (fan_out, as torchvision), zero
    biases; batch norm scale 1 and shift 0; dense layers N(0, 0.01^2)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)
