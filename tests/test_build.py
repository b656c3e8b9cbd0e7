"""What the build reports, and that every op has a kernel for every backend that was compiled."""

import pytest
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


def test_wrappers_call_the_direct_bindings_for_plain_tensors_only():
    # fastdl._C.eager binds every op the Python wrappers call (python/fastdl/ops/_eager.py); a
    # __torch_function__ subclass still goes through torch.ops, so its override sees the call.
    from fastdl.ops._eager import ops_for

    called = ["max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "adaptive_avg_pool2d", "batch_norm",
              "batch_norm_relu_inference", "conv2d", "conv2d_winograd", "lstm_layer", "gru_layer"]
    assert set(called) <= set(dir(fastdl._C.eager))
    assert ops_for(torch.randn(2)) is fastdl._C.eager

    seen = []

    class Logged(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return super().__torch_function__(func, types, args, kwargs or {})

    x = torch.randn(1, 2, 4, 4).as_subclass(Logged)
    assert ops_for(x) is torch.ops.fastdl
    out = fastdl.ops.max_pool2d(x, 2)
    assert type(out) is Logged and any("fastdl.max_pool2d" in name for name in seen)
    assert torch.equal(out.as_subclass(torch.Tensor), fastdl.ops.max_pool2d(x.as_subclass(torch.Tensor), 2))


def test_direct_bindings_raise_the_ops_errors():
    with pytest.raises(RuntimeError, match="fastdl.max_pool2d: input of spatial size"):
        fastdl.ops.max_pool2d(torch.randn(1, 1, 2, 2), 5)
