// CUDA entry points of the pooling ops: the same checks as the CPU kernels (common/pool2d_args.h),
// then allocation and a launch on the current stream (pool2d_kernels.cu). float16 and bfloat16 are
// accepted here, with float arithmetic inside the kernels.

#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/outputs.h"
#include "common/pool2d_args.h"
#include "cuda/host_utils.h"
#include "cuda/pool2d_kernels.h"

namespace fastdl {
namespace {

using cuda::check_launch;
using cuda::current_stream;
using cuda::dtype_of;

template <bool kIndices>
std::tuple<at::Tensor, at::Tensor> max_forward(const char* op, const at::Tensor& input,
                                               at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                               at::IntArrayRef padding, at::IntArrayRef dilation,
                                               bool ceil_mode) {
  const auto p = max_pool2d_problem(op, input, kernel_size, stride, padding, dilation, ceil_mode,
                                    /*reduced_precision=*/true);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = p.dense(input);
  at::Tensor out = new_output(p.output_sizes(), x.options(), p.memory_format);
  at::Tensor indices;
  if constexpr (kIndices) indices = new_output(p.output_sizes(), x.options().dtype(at::kLong), p.memory_format);
  if (out.numel() > 0) {
    check_launch(op, cuda::max_pool2d_forward(dtype_of(x), p.layout(), x.const_data_ptr(), out.data_ptr(),
                                              kIndices ? indices.data_ptr<int64_t>() : nullptr,
                                              p.shape, p.h, p.w, current_stream()));
  }
  return {out, indices};
}

at::Tensor max_pool2d_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                           at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, bool ceil_mode) {
  return std::get<0>(max_forward<false>("fastdl.max_pool2d", input, kernel_size, stride, padding,
                                        dilation, ceil_mode));
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices_cuda(
    const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  return max_forward<true>("fastdl.max_pool2d_with_indices", input, kernel_size, stride, padding,
                           dilation, ceil_mode);
}

at::Tensor max_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                    const at::Tensor& indices, at::IntArrayRef kernel_size,
                                    at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, bool ceil_mode) {
  constexpr const char* op = "fastdl.max_pool2d_backward";
  const auto p = max_pool2d_problem(op, input, kernel_size, stride, padding, dilation, ceil_mode,
                                    /*reduced_precision=*/true);
  check_grad_output(op, p, grad_output, input);
  check_indices(op, p, indices, input);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor grad_input = new_output(p.input_sizes(), input.options(), p.memory_format);
  if (grad_input.numel() == 0) return grad_input;
  const at::Tensor go = p.dense(grad_output), idx = p.dense(indices);
  check_launch(op, cuda::max_pool2d_backward(dtype_of(go), p.layout(), go.const_data_ptr(),
                                             idx.const_data_ptr<int64_t>(), grad_input.data_ptr(),
                                             p.shape, p.h, p.w, current_stream()));
  return grad_input;
}

template <typename Axis>
at::Tensor avg_forward(const char* op, const at::Tensor& input, const Pool2dProblem& p,
                       const AvgWindows<Axis>& windows) {
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = p.dense(input);
  at::Tensor out = new_output(p.output_sizes(), x.options(), p.memory_format);
  if (out.numel() > 0 && windows.identity()) {
    out.copy_(x);
  } else if (out.numel() > 0) {
    check_launch(op, cuda::avg_pool2d_forward(dtype_of(x), p.layout(), x.const_data_ptr(),
                                              out.data_ptr(), p.shape, windows, current_stream()));
  }
  return out;
}

template <typename Axis>
at::Tensor avg_backward(const char* op, const at::Tensor& grad_output, const at::Tensor& input,
                        const Pool2dProblem& p, const AvgWindows<Axis>& windows) {
  check_grad_output(op, p, grad_output, input);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor grad_input = new_output(p.input_sizes(), input.options(), p.memory_format);
  if (grad_input.numel() == 0) return grad_input;
  const at::Tensor go = p.dense(grad_output);
  if (windows.identity()) return grad_input.copy_(go);
  check_launch(op, cuda::avg_pool2d_backward(dtype_of(go), p.layout(), go.const_data_ptr(),
                                             grad_input.data_ptr(), p.shape, windows,
                                             current_stream()));
  return grad_input;
}

at::Tensor avg_pool2d_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                           at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                           bool count_include_pad, std::optional<int64_t> divisor_override) {
  constexpr const char* op = "fastdl.avg_pool2d";
  const auto p = avg_pool2d_problem(op, input, kernel_size, stride, padding, ceil_mode,
                                    count_include_pad, divisor_override, /*reduced_precision=*/true);
  return avg_forward(op, input, p, p.windows);
}

at::Tensor avg_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                    at::IntArrayRef padding, bool ceil_mode,
                                    bool count_include_pad, std::optional<int64_t> divisor_override) {
  constexpr const char* op = "fastdl.avg_pool2d_backward";
  const auto p = avg_pool2d_problem(op, input, kernel_size, stride, padding, ceil_mode,
                                    count_include_pad, divisor_override, /*reduced_precision=*/true);
  return avg_backward(op, grad_output, input, p, p.windows);
}

at::Tensor adaptive_avg_pool2d_cuda(const at::Tensor& input, at::IntArrayRef output_size) {
  constexpr const char* op = "fastdl.adaptive_avg_pool2d";
  const auto p = adaptive_avg_pool2d_problem(op, input, output_size, /*reduced_precision=*/true);
  return avg_forward(op, input, p, p.windows);
}

at::Tensor adaptive_avg_pool2d_backward_cuda(const at::Tensor& grad_output,
                                             const at::Tensor& input) {
  constexpr const char* op = "fastdl.adaptive_avg_pool2d_backward";
  const auto p = adaptive_avg_pool2d_problem(op, input, adaptive_grad_size(op, grad_output),
                                             /*reduced_precision=*/true);
  return avg_backward(op, grad_output, input, p, p.windows);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, CUDA, m) {
  m.impl("max_pool2d", &max_pool2d_cuda);
  m.impl("max_pool2d_with_indices", &max_pool2d_with_indices_cuda);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cuda);
  m.impl("avg_pool2d", &avg_pool2d_cuda);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_cuda);
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d_cuda);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward_cuda);
}

}  // namespace fastdl
