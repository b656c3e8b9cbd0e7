// CUDA 2-D convolution: the double kernels (conv2d_kernels_impl.cuh), compiled apart so that the
// units build in parallel; conv2d_kernels.cu's entry points call these.

#define FASTDL_CONV_UNIT 1  // FASTDL_CONV_UNIT_F64
#include "cuda/conv2d_kernels_impl.cuh"

namespace fastdl::cuda {

cudaError_t conv2d_forward_f64(const Conv2dForwardArgs& args, cudaStream_t stream) {
  return unit_forward(args, stream);
}

cudaError_t conv2d_backward_f64(const Conv2dBackwardArgs& args, cudaStream_t stream) {
  return unit_backward(args, stream);
}

}  // namespace fastdl::cuda
