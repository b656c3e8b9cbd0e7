"""Drop-in replacements for torch.nn layers, computed by fastdl's kernels. Each subclasses the layer
it replaces; fastdl.convert(model) swaps a model's stock layers for these in place."""

import torch

from fastdl.nn._fallback import fallback_counts, reset_fallback_counts
from fastdl.nn.batchnorm import BatchNorm1d, BatchNorm2d
from fastdl.nn.conv import Conv2d
from fastdl.nn.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from fastdl.nn.rnn import GRU, LSTM, GRUCell, LSTMCell

# torch.nn layer -> its fastdl.nn replacement, for fastdl.convert; each op family adds its layers.
REPLACEMENTS: dict[type[torch.nn.Module], type[torch.nn.Module]] = {
    torch.nn.MaxPool2d: MaxPool2d,
    torch.nn.AvgPool2d: AvgPool2d,
    torch.nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d,
    torch.nn.BatchNorm1d: BatchNorm1d,
    torch.nn.BatchNorm2d: BatchNorm2d,
    torch.nn.Conv2d: Conv2d,
}
REPLACEMENTS.update({torch.nn.LSTM: LSTM, torch.nn.GRU: GRU, torch.nn.LSTMCell: LSTMCell, torch.nn.GRUCell: GRUCell})

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d", "MaxPool2d", "REPLACEMENTS",
           "fallback_counts", "reset_fallback_counts"]
__all__ += ["GRU", "GRUCell", "LSTM", "LSTMCell"]
