"""Where fastdl's wrappers call its ops from.

The extension binds each op the wrappers call directly (fastdl._C.eager): the same dispatcher entry as
torch.ops.fastdl (autograd, fake tensors, dispatch modes, CUDA), typed, so that an eager call skips
torch.ops' boxed path: a small max pooling takes 3.0 us instead of 6.3 on the dev machine. torch.ops is
kept where the direct call cannot go: while torch.compile traces (Dynamo records torch.ops calls), and
for inputs that are not plain tensors (__torch_function__ subclasses, torch.fx proxies).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastdl import _C

_DIRECT = _C.eager
_OPS = torch.ops.fastdl


def ops_for(input: Tensor):
    """The namespace whose functions a wrapper calls for this input: fastdl._C.eager or torch.ops.fastdl."""
    if torch.compiler.is_compiling() or type(input) is not Tensor:
        return _OPS
    return _DIRECT
