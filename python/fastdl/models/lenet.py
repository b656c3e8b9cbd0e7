"""The two small digit CNNs of the source documents: LeNet-5 and the book's MNIST CNN. Both take a
fixed input size (their dense layers follow a flattened feature map) and keep PyTorch's default
initialization."""

from __future__ import annotations

from torch import Tensor, nn


class LeNet5(nn.Module):
    """LeNet-5 on (N, C, 32, 32) images -> (N, num_classes) logits.

    C1 conv 5x5x6 -> S2 subsampling -> C3 conv 5x5x16 -> S4 subsampling -> C5 conv 5x5x120 (1x1 maps)
    -> F6 dense 84 -> dense num_classes. Choices where the documents and PyTorch practice differ:
    the subsampling layers are nn.AvgPool2d(2) (the original's trainable coefficient and bias per map
    are dropped, 12 + 32 parameters), and every hidden layer uses tanh (the original's sigmoid after
    subsampling and its scaled tanh in F6 become plain tanh). C3 connects to all six S2 maps.
    Parameters for one input channel and 10 classes: 61,706.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.in_channels = in_channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(16, 120, 5), nn.Tanh(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class MnistCNN(nn.Module):
    """The book's MNIST CNN on (N, C, 28, 28) images -> (N, num_classes) logits.

    conv 5x5x32 'same' + ReLU -> max pool 2x2 -> conv 5x5x64 'same' + ReLU -> max pool 2x2 ->
    dense 1024 + ReLU -> dropout(p) -> dense num_classes. Parameters for one input channel and 10
    classes: 3,274,634.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.5):
        super().__init__()
        self.in_channels = in_channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(7 * 7 * 64, 1024), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
