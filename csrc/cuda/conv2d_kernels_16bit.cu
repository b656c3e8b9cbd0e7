// CUDA 2-D convolution: the float16 and bfloat16 kernels (conv2d_kernels_impl.cuh), compiled apart so that the
// units build in parallel; conv2d_kernels.cu's entry points call these.

#define FASTDL_CONV_UNIT 2  // FASTDL_CONV_UNIT_16BIT
#include "cuda/conv2d_kernels_impl.cuh"

namespace fastdl::cuda {

cudaError_t conv2d_forward_16bit(const Conv2dForwardArgs& args, cudaStream_t stream) {
  return unit_forward(args, stream);
}

cudaError_t conv2d_backward_16bit(const Conv2dBackwardArgs& args, cudaStream_t stream) {
  return unit_backward(args, stream);
}

}  // namespace fastdl::cuda
