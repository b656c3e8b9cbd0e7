"""AlexNet and VGG: plain stacks of convolutions, ReLUs and max pooling, then adaptive average
pooling and three dense layers. Layer shapes and state_dict keys are torchvision's."""

from __future__ import annotations

from torch import Tensor, nn

from fastdl.models.init import init_cnn_weights


class ConvStackClassifier(nn.Module):
    """features -> adaptive average pooling to pool_size x pool_size -> classifier: (N, C, H, W) ->
    (N, num_classes)."""

    def __init__(self, in_channels: int, features: nn.Sequential, pool_size: int, classifier: nn.Sequential):
        super().__init__()
        self.in_channels = in_channels
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = classifier
        init_cnn_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


class AlexNet(ConvStackClassifier):
    """AlexNet (single-stream, torchvision's widths 64-192-384-256-256; the paper's 96-256-384-384-256
    ran on two GPUs; no local response normalization), dropout before the first two dense layers.
    Inputs from 63x63 up (224x224 naturally). 61,100,840 parameters at 3 channels and 1000 classes."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5):
        features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        super().__init__(in_channels, features, 6, classifier)


# Convolutions per stage; the five stages have 64, 128, 256, 512, 512 channels, each ends in a 2x2 max pool.
VGG_STAGE_DEPTHS = {11: (1, 1, 2, 2, 2), 16: (2, 2, 3, 3, 3)}
VGG_STAGE_WIDTHS = (64, 128, 256, 512, 512)


class VGG(ConvStackClassifier):
    """VGG-11 or VGG-16 (configurations A and D): 3x3 convolutions with padding 1, each followed by
    batch norm when batch_norm is set, and ReLU; 2x2 max pooling after each stage; dense 4096, 4096,
    num_classes with dropout after the first two. Inputs from 32x32 up (224x224 naturally).
    Parameters at 3 channels and 1000 classes: VGG-11 132,863,336 (with batch norm 132,868,840),
    VGG-16 138,357,544 (with batch norm 138,365,992)."""

    def __init__(self, depth: int, num_classes: int = 1000, in_channels: int = 3, batch_norm: bool = False,
                 dropout: float = 0.5):
        if depth not in VGG_STAGE_DEPTHS:
            raise ValueError(f"depth must be one of {sorted(VGG_STAGE_DEPTHS)}, but got {depth}")
        layers, channels = [], in_channels
        for convs, width in zip(VGG_STAGE_DEPTHS[depth], VGG_STAGE_WIDTHS):
            for _ in range(convs):
                layers.append(nn.Conv2d(channels, width, 3, padding=1))
                layers += [nn.BatchNorm2d(width)] if batch_norm else []
                layers.append(nn.ReLU(inplace=True))
                channels = width
            layers.append(nn.MaxPool2d(2, 2))
        classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
        super().__init__(in_channels, nn.Sequential(*layers), 7, classifier)
