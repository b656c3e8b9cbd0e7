// The CUDA backend of the batch normalization ops (common/batch_norm_ops.h does the checks and
// allocation): a workspace for the partial sums, then the launches of batch_norm_kernels.cu.

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/batch_norm_ops.h"
#include "cuda/batch_norm_kernels.h"
#include "cuda/host_utils.h"

namespace fastdl {
namespace {

using cuda::check_launch;
using cuda::current_stream;
using cuda::dtype_of;

const void* const_ptr(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }
void* mutable_ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

at::Tensor workspace(const BatchNormProblem& p, const at::Tensor& like) {
  const auto bytes = int64_t(cuda::batch_norm_workspace_bytes(p.shape, dtype_of(like)));
  return at::empty({bytes}, like.options().dtype(at::kByte));
}

struct CudaBatchNorm {
  static constexpr bool kReducedPrecision = true;

  static void forward(const BatchNormForward& f) {
    const BatchNormProblem& p = f.problem;
    const at::Tensor ws = workspace(p, f.input);
    const cuda::BatchNormForwardArgs args{p.shape, dtype_of(f.input), dtype_of(p.param_type), f.input.const_data_ptr(),
                                          f.output.data_ptr(), const_ptr(f.weight), const_ptr(f.bias),
                                          mutable_ptr(f.running_mean), mutable_ptr(f.running_var),
                                          f.save_mean.data_ptr(), f.save_invstd.data_ptr(), f.training,
                                          f.momentum, f.eps, ws.data_ptr(), f.relu};
    check_launch("fastdl.batch_norm", cuda::batch_norm_forward(args, current_stream()));
  }

  static void backward(const BatchNormBackward& b) {
    const BatchNormProblem& p = b.problem;
    const at::Tensor ws = workspace(p, b.input);
    const cuda::BatchNormBackwardArgs args{p.shape, dtype_of(b.input), dtype_of(p.param_type),
                                           b.grad_output.const_data_ptr(), b.input.const_data_ptr(),
                                           const_ptr(b.weight), b.save_mean.const_data_ptr(),
                                           b.save_invstd.const_data_ptr(), mutable_ptr(b.grad_input),
                                           mutable_ptr(b.grad_weight), mutable_ptr(b.grad_bias), b.training,
                                           ws.data_ptr()};
    check_launch("fastdl.batch_norm_backward", cuda::batch_norm_backward(args, current_stream()));
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, CUDA, m) { BatchNormOps<CudaBatchNorm>::define_kernels(m); }

}  // namespace fastdl
