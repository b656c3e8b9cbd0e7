"""What the build reports, and that every op has a kernel for every backend that was compiled."""

import torch

import fastdl


def fastdl_ops() -> list[str]:
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastdl::"))


def test_build_info():
    info = fastdl.build_info()
    assert info["cuda"] == fastdl.cuda_enabled()
    assert info["cpu_capability"] in ("DEFAULT", "AVX2", "AVX512")
    assert info["num_threads"] == torch.get_num_threads()
    if info["cuda"]:
        assert info["cuda_arch_list"]


def test_every_op_has_a_kernel_per_compiled_backend_and_autograd():
    ops = fastdl_ops()
    assert {"fastdl::max_pool2d", "fastdl::batch_norm", "fastdl::batch_norm_backward"} <= set(ops)
    keys = ["CPU", "Autograd"] + (["CUDA"] if fastdl.cuda_enabled() else [])
    for name in ops:
        for key in keys:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(name, key), (name, key)


def test_cuda_follows_torch_build_not_gpu_presence():
    # setup.py builds the CUDA kernels whenever torch has CUDA and a toolkit is found, GPU or not.
    if torch.version.cuda is None:
        assert not fastdl.cuda_enabled()
