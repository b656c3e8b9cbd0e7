// The CUDA backend of the pooling ops (common/pool2d_ops.h does the checks and allocation): maps
// dtypes and layouts onto the launchers of pool2d_kernels.cu and checks each launch. float16 and
// bfloat16 are accepted here, with float arithmetic inside the kernels.

#include <torch/library.h>

#include "common/pool2d_ops.h"
#include "cuda/host_utils.h"
#include "cuda/pool2d_kernels.h"

namespace fastdl {
namespace {

using cuda::check_launch;
using cuda::current_stream;
using cuda::dtype_of;

struct CudaPooling {
  static constexpr bool kReducedPrecision = true;

  static void max_forward(const at::Tensor& input, at::Tensor& out, int64_t* indices, const MaxPool2dProblem& p) {
    check_launch("fastdl.max_pool2d",
                 cuda::max_pool2d_forward(dtype_of(input), p.layout(), input.const_data_ptr(), out.data_ptr(),
                                          indices, p.shape, p.h, p.w, current_stream()));
  }

  static void max_backward(const at::Tensor& grad_out, const at::Tensor& indices, at::Tensor& grad_in,
                           const MaxPool2dProblem& p) {
    check_launch("fastdl.max_pool2d_backward",
                 cuda::max_pool2d_backward(dtype_of(grad_out), p.layout(), grad_out.const_data_ptr(),
                                           indices.const_data_ptr<int64_t>(), grad_in.data_ptr(), p.shape,
                                           p.h, p.w, current_stream()));
  }

  template <typename Axis>
  static void avg_forward(const at::Tensor& input, at::Tensor& out, const Pool2dProblem& p,
                          const AvgWindows<Axis>& win) {
    check_launch("fastdl.avg_pool2d",
                 cuda::avg_pool2d_forward(dtype_of(input), p.layout(), input.const_data_ptr(), out.data_ptr(),
                                          p.shape, win, current_stream()));
  }

  template <typename Axis>
  static void avg_backward(const at::Tensor& grad_out, at::Tensor& grad_in, const Pool2dProblem& p,
                           const AvgWindows<Axis>& win) {
    check_launch("fastdl.avg_pool2d_backward",
                 cuda::avg_pool2d_backward(dtype_of(grad_out), p.layout(), grad_out.const_data_ptr(),
                                           grad_in.data_ptr(), p.shape, win, current_stream()));
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, CUDA, m) { Pool2dOps<CudaPooling>::define_kernels(m); }

}  // namespace fastdl
