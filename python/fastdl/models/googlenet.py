"""GoogLeNet (Inception v1, Szegedy et al. 2015) without the auxiliary classifiers, with batch norm
after every convolution and torchvision's state_dict keys."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from fastdl.models.init import init_cnn_weights


class ConvBNReLU(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as torchvision's GoogLeNet), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    """Four parallel branches concatenated along channels: 1x1; 1x1 reduction then 3x3; 1x1
    reduction then large_kernel x large_kernel (5 in the paper); 3x3/1 max pooling then 1x1."""

    def __init__(self, in_channels: int, ch1x1: int, reduce3x3: int, ch3x3: int, reduce_large: int, ch_large: int,
                 pool_proj: int, large_kernel: int):
        super().__init__()
        self.out_channels = ch1x1 + ch3x3 + ch_large + pool_proj
        self.branch1 = ConvBNReLU(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(ConvBNReLU(in_channels, reduce3x3, 1), ConvBNReLU(reduce3x3, ch3x3, 3))
        self.branch3 = nn.Sequential(ConvBNReLU(in_channels, reduce_large, 1),
                                     ConvBNReLU(reduce_large, ch_large, large_kernel))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), ConvBNReLU(in_channels, pool_proj, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


# The paper's Table 1: per module #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj; between
# them max poolings of stride 2 and the given kernel (2x2 before the last stage, as torchvision).
INCEPTION_STAGES = [
    ("inception3a", (64, 96, 128, 16, 32, 32)),
    ("inception3b", (128, 128, 192, 32, 96, 64)),
    ("maxpool3", 3),
    ("inception4a", (192, 96, 208, 16, 48, 64)),
    ("inception4b", (160, 112, 224, 24, 64, 64)),
    ("inception4c", (128, 128, 256, 24, 64, 64)),
    ("inception4d", (112, 144, 288, 32, 64, 64)),
    ("inception4e", (256, 160, 320, 32, 128, 128)),
    ("maxpool4", 2),
    ("inception5a", (256, 160, 320, 32, 128, 128)),
    ("inception5b", (384, 192, 384, 48, 128, 128)),
]


class GoogLeNet(nn.Sequential):
    """GoogLeNet on (N, C, H, W) -> (N, num_classes): a stem of 7x7/2, 1x1 and 3x3 convolutions with
    two 3x3/2 max poolings, nine Inception modules, global average pooling, dropout, dense. Max
    poolings round up (ceil_mode), so inputs from 32x32 work (224x224 naturally).

    large_kernel=5 is the paper's 5x5 branch (7,005,832 parameters at 3 channels and 1000 classes);
    large_kernel=3 is torchvision's 3x3 there, kept by torchvision for its weights (6,624,904, equal
    to torchvision.models.googlenet(aux_logits=False), whose weights it loads). Dropout 0.2 as
    torchvision's (the paper: 0.4). Replace `fc` for a new head."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, large_kernel: int = 5, dropout: float = 0.2):
        if large_kernel not in (3, 5):
            raise ValueError(f"large_kernel must be 5 (the paper's) or 3 (torchvision's), but got {large_kernel}")
        layers = [
            ("conv1", ConvBNReLU(in_channels, 64, 7, stride=2)), ("maxpool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
            ("conv2", ConvBNReLU(64, 64, 1)), ("conv3", ConvBNReLU(64, 192, 3)),
            ("maxpool2", nn.MaxPool2d(3, 2, ceil_mode=True)),
        ]
        channels = 192
        for name, widths in INCEPTION_STAGES:
            if isinstance(widths, int):
                layers.append((name, nn.MaxPool2d(widths, 2, ceil_mode=True)))
                continue
            module = Inception(channels, *widths, large_kernel=large_kernel)
            layers.append((name, module))
            channels = module.out_channels
        layers += [("avgpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("dropout", nn.Dropout(dropout)),
                   ("fc", nn.Linear(channels, num_classes))]
        super().__init__(OrderedDict(layers))
        self.in_channels = in_channels
        init_cnn_weights(self)
