"""ResNet-18, -34 and -50 (He et al. 2016) with torchvision's layer shapes and state_dict keys:
batch norm after every convolution, projection shortcuts (1x1 convolution + batch norm) where the
shape changes, and ResNet-50's stride on the 3x3 convolution of its bottleneck blocks."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from fastdl.models.init import init_cnn_weights


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)
    return conv, nn.BatchNorm2d(out_channels)


def shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """The projection a block's input needs to be added to its output (None: identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(*conv_bn(in_channels, out_channels, 1, stride))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (the first with the stride) around an identity or projection shortcut."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(in_channels, width, 3, stride)
        self.conv2, self.bn2 = conv_bn(width, width, 3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut(in_channels, width, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 reduction to `width`, 3x3 convolution with the stride, 1x1 expansion to 4 * width."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(in_channels, width, 1)
        self.conv2, self.bn2 = conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = conv_bn(width, width * self.expansion, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut(in_channels, width * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


# depth -> block type and blocks per stage; the four stages have widths 64, 128, 256, 512.
RESNET_LAYOUTS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3))}


class ResNet(nn.Sequential):
    """ResNet on (N, C, H, W) -> (N, num_classes): 7x7/2 convolution, 3x3/2 max pooling, four stages
    (the last three halve the size), global average pooling, dense. Inputs from 32x32 up (224x224
    naturally). Parameters at 3 channels and 1000 classes: ResNet-18 11,689,512, ResNet-34
    21,797,672, ResNet-50 25,557,032. Replace `fc` for a new head."""

    def __init__(self, depth: int, num_classes: int = 1000, in_channels: int = 3):
        if depth not in RESNET_LAYOUTS:
            raise ValueError(f"depth must be one of {sorted(RESNET_LAYOUTS)}, but got {depth}")
        block, counts = RESNET_LAYOUTS[depth]
        conv1, bn1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64)
        layers = [("conv1", conv1), ("bn1", bn1), ("relu", nn.ReLU(inplace=True)), ("maxpool", nn.MaxPool2d(3, 2, 1))]
        channels = 64
        for stage, (count, width) in enumerate(zip(counts, (64, 128, 256, 512)), start=1):
            blocks = []
            for i in range(count):
                blocks.append(block(channels, width, 2 if i == 0 and stage > 1 else 1))
                channels = width * block.expansion
            layers.append((f"layer{stage}", nn.Sequential(*blocks)))
        layers += [("avgpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
                   ("fc", nn.Linear(channels, num_classes))]
        super().__init__(OrderedDict(layers))
        self.in_channels = in_channels
        init_cnn_weights(self)
