#pragma once
// Launchers of the CUDA 2-D convolution kernels (conv2d_kernels_impl.cuh, built as conv2d_kernels*.cu),
// on raw device pointers. The host side (conv2d.cpp) checks arguments, sets the device, allocates
// outputs and the workspace, and skips empty batches; everything here is asynchronous on `stream`.
//
// Tensors: input, output and their gradients N,C,H,W dense in shape.layout (N,C,H,W or N,H,W,C);
// weight and grad_weight contiguous (K, C/groups, R, S); bias and grad_bias K values; all of `dtype`.

#include <cuda_runtime_api.h>

#include <cstddef>

#include "common/conv2d_shape.h"
#include "cuda/dtype.h"

namespace fastdl::cuda {

// The host emulation (Execution, cuda/dtype.h) takes host pointers (float and double only; other
// dtypes return cudaErrorNotSupported; `stream` is ignored) and runs the same plan, for a device of
// kEmulatedMultiprocessors (an H100), and the same tile logic, the threads of a block one after another
// between the kernel's barriers; host_mma runs float data through the float16/bfloat16 tensor-core
// tile's logic (its staging, fragment loads, PTX's mma layout and result mapping).
constexpr int kEmulatedMultiprocessors = 132;

struct Conv2dForwardArgs {
  Conv2dShape shape;
  DType dtype;
  const void* input;
  const void* weight;
  const void* bias;  // null: no bias
  void* output;
  void* workspace;  // conv2d_workspace_bytes(*this) bytes
  Execution execution = Execution::device;
};

// The gradients that are null are not computed; the others are written in full.
struct Conv2dBackwardArgs {
  Conv2dShape shape;
  DType dtype;
  const void* grad_output;
  const void* input;
  const void* weight;
  void* grad_input;
  void* grad_weight;
  void* grad_bias;
  void* workspace;  // conv2d_workspace_bytes(*this) bytes
  Execution execution = Execution::device;
};

// Scratch memory a call needs (reordered weights, per-split partial sums); may be 0. Depends on the
// current device (its multiprocessor count): ask on the device that launches.
std::size_t conv2d_workspace_bytes(const Conv2dForwardArgs& args);
std::size_t conv2d_workspace_bytes(const Conv2dBackwardArgs& args);

cudaError_t conv2d_forward(const Conv2dForwardArgs& args, cudaStream_t stream);
cudaError_t conv2d_backward(const Conv2dBackwardArgs& args, cudaStream_t stream);

}  // namespace fastdl::cuda
