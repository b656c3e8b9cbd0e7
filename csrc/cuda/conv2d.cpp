// The CUDA backend of the 2-D convolution ops (common/conv2d_ops.h does the checks and allocation):
// a workspace for the reordered weight and the split sums, then the launches of conv2d_kernels.cu.
// float16 and bfloat16 are accepted, with float arithmetic inside the kernels.

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/conv2d_ops.h"
#include "cuda/conv2d_kernels.h"
#include "cuda/host_utils.h"

namespace fastdl {
namespace {

using cuda::check_launch;
using cuda::current_stream;
using cuda::dtype_of;

const void* const_ptr(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }
void* mutable_ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

at::Tensor workspace(std::size_t bytes, const at::Tensor& like) {
  return at::empty({int64_t(bytes)}, like.options().dtype(at::kByte));
}

struct CudaConv2d {
  static constexpr bool kReducedPrecision = true;

  static void forward(const Conv2dForward& f) {
    cuda::Conv2dForwardArgs args{f.shape, dtype_of(f.input), f.input.const_data_ptr(), f.weight.const_data_ptr(),
                                 const_ptr(f.bias), f.output.data_ptr(), nullptr};
    const at::Tensor ws = workspace(cuda::conv2d_workspace_bytes(args), f.input);
    args.workspace = ws.data_ptr();
    check_launch("fastdl.conv2d", cuda::conv2d_forward(args, current_stream()));
  }

  static void backward(const Conv2dBackward& b) {
    cuda::Conv2dBackwardArgs args{b.shape, dtype_of(b.input), b.grad_output.const_data_ptr(), b.input.const_data_ptr(),
                                  b.weight.const_data_ptr(), mutable_ptr(b.grad_input), mutable_ptr(b.grad_weight),
                                  mutable_ptr(b.grad_bias), nullptr};
    const at::Tensor ws = workspace(cuda::conv2d_workspace_bytes(args), b.input);
    args.workspace = ws.data_ptr();
    check_launch("fastdl.conv2d_backward", cuda::conv2d_backward(args, current_stream()));
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, CUDA, m) { Conv2dOps<CudaConv2d>::define_kernels(m); }

}  // namespace fastdl
