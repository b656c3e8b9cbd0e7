"""Switches that change how fastdl picks its kernels, like torch.backends.cudnn's.

benchmark: when True, fastdl.ops.conv2d(algorithm='auto') times every algorithm that applies to a
shape the first time it meets it (forward only, on the call's own tensors, a few runs each) and
keeps the fastest for that shape; when False (default) it follows a fixed heuristic (see
fastdl.ops.conv). Shapes are keyed by device, dtype, memory format, input and weight sizes and
padding. clear_benchmark_cache() forgets the choices.
"""

benchmark: bool = False

# The algorithm chosen by timing for each shape key (fastdl.ops.conv fills it).
benchmarked: dict[tuple, str] = {}


def clear_benchmark_cache() -> None:
    """Forget the algorithms chosen by timing (fastdl.backends.benchmark = True)."""
    benchmarked.clear()
