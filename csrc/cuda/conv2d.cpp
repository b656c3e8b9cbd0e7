// The CUDA backend of the 2-D convolution ops (common/conv2d_ops.h does the checks and allocation):
// a workspace for the reordered weight and the split sums, then the launches of conv2d_kernels.h.
// float16 and bfloat16 are accepted: tensor cores on sm_80 and up, float accumulation.
//
// The same backend with the kernels' host emulation (conv2d_kernels.h) is registered on CPU tensors as
// torch.ops.fastdl_cuda_emulation.conv2d and .conv2d_backward (and *_int64, with 64-bit indices, and
// *_mma, the float16/bfloat16 tensor-core tile's logic on float data; schemas inferred, no defaults),
// so that tests check the CUDA kernels' indexing on machines without a GPU. It is not part of fastdl's
// API.

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/conv2d_ops.h"
#include "cuda/conv2d_kernels.h"
#include "cuda/host_utils.h"

namespace fastdl {
namespace {

using cuda::check_launch;
using cuda::dtype_of;

const void* const_ptr(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }
void* mutable_ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

at::Tensor workspace(std::size_t bytes, const at::Tensor& like) {
  return at::empty({int64_t(bytes)}, like.options().dtype(at::kByte));
}

template <cuda::Execution kExecution>
struct CudaConv2d {
  static constexpr bool kDevice = kExecution == cuda::Execution::device;
  static constexpr bool kReducedPrecision = kDevice;

  static cudaStream_t stream() { return kDevice ? cuda::current_stream() : nullptr; }

  static void forward(const Conv2dForward& f) {
    cuda::Conv2dForwardArgs args{f.shape, dtype_of(f.input), f.input.const_data_ptr(), f.weight.const_data_ptr(),
                                 const_ptr(f.bias), f.output.data_ptr(), nullptr, kExecution};
    const at::Tensor ws = workspace(cuda::conv2d_workspace_bytes(args), f.input);
    args.workspace = ws.data_ptr();
    check_launch("fastdl.conv2d", cuda::conv2d_forward(args, stream()));
  }

  static void backward(const Conv2dBackward& b) {
    cuda::Conv2dBackwardArgs args{b.shape, dtype_of(b.input), b.grad_output.const_data_ptr(), b.input.const_data_ptr(),
                                  b.weight.const_data_ptr(), mutable_ptr(b.grad_input), mutable_ptr(b.grad_weight),
                                  mutable_ptr(b.grad_bias), nullptr, kExecution};
    const at::Tensor ws = workspace(cuda::conv2d_workspace_bytes(args), b.input);
    args.workspace = ws.data_ptr();
    check_launch("fastdl.conv2d_backward", cuda::conv2d_backward(args, stream()));
  }
};

using Emulated = Conv2dOps<CudaConv2d<cuda::Execution::host>>;
using EmulatedInt64 = Conv2dOps<CudaConv2d<cuda::Execution::host_int64>>;
using EmulatedMma = Conv2dOps<CudaConv2d<cuda::Execution::host_mma>>;

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, CUDA, m) { Conv2dOps<CudaConv2d<cuda::Execution::device>>::define_kernels(m); }

TORCH_LIBRARY(fastdl_cuda_emulation, m) {
  m.def("conv2d", TORCH_FN(Emulated::conv2d));
  m.def("conv2d_backward", TORCH_FN(Emulated::conv2d_backward));
  m.def("conv2d_int64", TORCH_FN(EmulatedInt64::conv2d));
  m.def("conv2d_backward_int64", TORCH_FN(EmulatedInt64::conv2d_backward));
  m.def("conv2d_mma", TORCH_FN(EmulatedMma::conv2d));
  m.def("conv2d_backward_mma", TORCH_FN(EmulatedMma::conv2d_backward));
}

}  // namespace fastdl
