"""fastdl's functional API: typed wrappers over the torch.ops.fastdl ops, with their fake kernels and
autograd formulas registered on import (what torch.compile, torch.export and opcheck need)."""

from fastdl.ops import conv
from fastdl.ops.batch_norm import batch_norm, batch_norm_relu_inference
from fastdl.ops.conv import conv2d
from fastdl.ops.pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d, max_pool2d_with_indices
from fastdl.ops.rnn import gru, gru_cell, lstm, lstm_cell

__all__ = ["adaptive_avg_pool2d", "avg_pool2d", "batch_norm", "batch_norm_relu_inference", "conv2d", "max_pool2d",
           "max_pool2d_with_indices"]
__all__ += ["gru", "gru_cell", "lstm", "lstm_cell"]
