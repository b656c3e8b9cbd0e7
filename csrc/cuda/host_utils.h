#pragma once
// Host-side glue between tensors and the CUDA launchers: dtype tags, the current stream, and the
// check that turns a failed launch into a Python error naming the op.

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include "cuda/dtype.h"

namespace fastdl::cuda {

inline DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::f32;
    case at::kDouble: return DType::f64;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: TORCH_CHECK(false, "fastdl: no CUDA kernel for dtype ", t, " (checked before)");
  }
}

inline DType dtype_of(const at::Tensor& t) { return dtype_of(t.scalar_type()); }

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

inline void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace fastdl::cuda
