"""fastdl ops on CuPy arrays through DLPack, without copies: torch.from_dlpack(cupy_array) shares
CuPy's memory, the fastdl op runs on that tensor, and cupy.from_dlpack(result) shares the result's
memory. Skipped without a GPU or without CuPy."""

import pytest
import torch
import torch.nn.functional as F

import fastdl
from conftest import tolerance

pytestmark = pytest.mark.cuda


@pytest.fixture
def cupy():
    return pytest.importorskip("cupy")


def shared(array) -> torch.Tensor:
    """The array as a tensor, checked to be the same memory."""
    tensor = torch.from_dlpack(array)
    assert tensor.device.type == "cuda" and tensor.data_ptr() == array.data.ptr
    return tensor


def returned(cupy, tensor: torch.Tensor):
    """The tensor as a CuPy array, checked to be the same memory."""
    array = cupy.from_dlpack(tensor)
    assert array.data.ptr == tensor.data_ptr()
    return array


def test_max_pool2d(cupy):
    x = shared(cupy.random.standard_normal((4, 8, 17, 16), dtype=cupy.float32))
    y = returned(cupy, fastdl.ops.max_pool2d(x, 3, stride=2))
    assert torch.equal(torch.from_dlpack(y), F.max_pool2d(x, 3, stride=2))


def test_conv2d(cupy):
    x = shared(cupy.random.standard_normal((2, 16, 20, 20), dtype=cupy.float32))
    w = shared(cupy.random.standard_normal((32, 16, 3, 3), dtype=cupy.float32) / 12)
    y = returned(cupy, fastdl.ops.conv2d(x, w, padding=1))
    torch.testing.assert_close(torch.from_dlpack(y), F.conv2d(x, w, padding=1), **tolerance("conv2d", torch.float32))


def test_batch_norm_inference(cupy):
    x = shared(cupy.random.standard_normal((4, 8, 10, 10), dtype=cupy.float32))
    mean, var = (shared(cupy.random.uniform(0.5, 1.5, 8, dtype=cupy.float32)) for _ in range(2))
    y = returned(cupy, fastdl.ops.batch_norm(x, mean, var))
    torch.testing.assert_close(torch.from_dlpack(y), F.batch_norm(x, mean, var),
                               **tolerance("batch_norm", torch.float32))
