"""What the build reports, and that every op has a kernel for every backend that was compiled."""

import torch

import fastdl

POOLING_OPS = ["max_pool2d", "max_pool2d_with_indices", "max_pool2d_backward", "avg_pool2d",
               "avg_pool2d_backward", "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward"]


def test_build_info():
    info = fastdl.build_info()
    assert info["cuda"] == fastdl.cuda_enabled()
    assert info["cpu_capability"] in ("DEFAULT", "AVX2", "AVX512")
    assert info["num_threads"] == torch.get_num_threads()
    if info["cuda"]:
        assert info["cuda_arch_list"]


def test_every_op_has_a_kernel_per_compiled_backend():
    backends = ["CPU"] + (["CUDA"] if fastdl.cuda_enabled() else [])
    for name in POOLING_OPS:
        for key in backends:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastdl::{name}", key), (name, key)


def test_cuda_follows_torch_build_not_gpu_presence():
    # setup.py builds the CUDA kernels whenever torch has CUDA and a toolkit is found, GPU or not.
    if torch.version.cuda is None:
        assert not fastdl.cuda_enabled()
