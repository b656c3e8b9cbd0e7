// CUDA 2-D convolution: the float kernels and the entry points of conv2d_kernels.h, which hand double
// to conv2d_kernels_f64.cu and float16/bfloat16 to conv2d_kernels_16bit.cu (the kernels themselves are
// in conv2d_kernels_impl.cuh; three units, so that they build in parallel).

#define FASTDL_CONV_UNIT 0  // FASTDL_CONV_UNIT_F32
#include "cuda/conv2d_kernels_impl.cuh"

namespace fastdl::cuda {

std::size_t conv2d_workspace_bytes(const Conv2dForwardArgs& args) { return plan(args).bytes; }
std::size_t conv2d_workspace_bytes(const Conv2dBackwardArgs& args) { return plan(args).bytes; }

cudaError_t conv2d_forward(const Conv2dForwardArgs& args, cudaStream_t stream) {
  if (args.dtype == DType::f64) return conv2d_forward_f64(args, stream);
  if (args.dtype == DType::f16 || args.dtype == DType::bf16) return conv2d_forward_16bit(args, stream);
  return unit_forward(args, stream);
}

cudaError_t conv2d_backward(const Conv2dBackwardArgs& args, cudaStream_t stream) {
  if (args.dtype == DType::f64) return conv2d_backward_f64(args, stream);
  if (args.dtype == DType::f16 || args.dtype == DType::bf16) return conv2d_backward_16bit(args, stream);
  return unit_backward(args, stream);
}

}  // namespace fastdl::cuda
