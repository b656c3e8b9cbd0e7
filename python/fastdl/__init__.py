"""fastdl: hand-written CPU and CUDA kernels for classic deep-learning layers, as PyTorch ops.

    import fastdl
    y = fastdl.ops.max_pool2d(x, 3, 2)       # functional, like torch.nn.functional
    layer = fastdl.nn.MaxPool2d(3, 2)         # drop-in layers, subclasses of torch.nn's
    fastdl.convert(model)                     # swap a model's stock layers in place
    fastdl.fuse_conv_bn(model.eval())         # inference: fold BatchNorm into the convolutions

The ops are registered as torch.ops.fastdl.* with fake kernels and autograd, so they work under
torch.compile, torch.export and torch.library.opcheck.
"""

import torch  # noqa: F401  (loads libtorch, which the extension links against)

from fastdl import _C

if not _C.cpu_supported():
    raise ImportError(
        f"fastdl's CPU kernels were built for {_C.cpu_capability()}, which this processor lacks; "
        "rebuild with FASTDL_CPU_CAPABILITY=default"
    )


# Read once: a constant of the build, and a plain Python value that torch.compile can trace (a call into
# the extension inside a compiled module would break the graph, or fail under fullgraph).
_CUDA_ENABLED: bool = bool(_C.cuda_enabled())


def cuda_enabled() -> bool:
    """Whether fastdl was built with its CUDA kernels (independent of a GPU being present)."""
    return _CUDA_ENABLED


def build_info() -> dict:
    """How this fastdl was built: CUDA on/off and arch list, CPU vector level, CPU threads."""
    return {
        "cuda": _CUDA_ENABLED,
        "cuda_arch_list": _C.cuda_arch_list(),
        "cpu_capability": _C.cpu_capability(),
        "num_threads": _C.num_threads(),
        "torch": torch.__version__,
    }


from fastdl import backends, models, nn, ops  # noqa: E402
from fastdl.convert import convert, revert  # noqa: E402
from fastdl.fusion import fuse_conv_bn  # noqa: E402

__all__ = ["backends", "build_info", "convert", "cuda_enabled", "fuse_conv_bn", "models", "nn", "ops", "revert"]
