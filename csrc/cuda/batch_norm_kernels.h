#pragma once
// Launchers of the CUDA batch normalization kernels (batch_norm_kernels.cu), on raw device pointers.
// The host side (batch_norm.cpp) checks arguments, allocates outputs and the workspace, and maps
// dtypes; everything here is asynchronous on `stream`.

#include <cuda_runtime_api.h>

#include <cstddef>

#include "common/batch_norm_math.h"
#include "cuda/dtype.h"

namespace fastdl::cuda {

// Forward: input and output dense in shape.layout; weight, bias, running statistics (param dtype,
// null when absent) and save_mean, save_invstd (float, or double for double input) have C values.
struct BatchNormForwardArgs {
  BatchNormShape shape;
  DType input_type, param_type;
  const void* input;
  void* output;
  const void* weight;
  const void* bias;
  void* running_mean;
  void* running_var;
  void* save_mean;
  void* save_invstd;
  bool training;
  double momentum, eps;
  void* workspace;  // batch_norm_workspace_bytes(shape, input_type) bytes
  bool relu;        // eval only: output relu(y)
};

// Backward: the gradients that are null are not computed.
struct BatchNormBackwardArgs {
  BatchNormShape shape;
  DType input_type, param_type;
  const void* grad_output;
  const void* input;
  const void* weight;
  const void* save_mean;
  const void* save_invstd;
  void* grad_input;
  void* grad_weight;
  void* grad_bias;
  bool training;
  void* workspace;
};

std::size_t batch_norm_workspace_bytes(const BatchNormShape& shape, DType input_type);

cudaError_t batch_norm_forward(const BatchNormForwardArgs& args, cudaStream_t stream);
cudaError_t batch_norm_backward(const BatchNormBackwardArgs& args, cudaStream_t stream);

}  // namespace fastdl::cuda
