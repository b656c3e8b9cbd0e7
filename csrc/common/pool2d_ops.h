#pragma once
// The pooling ops' entry points, written once for every backend: check the call
// (pool2d_args.h), set the device, allocate outputs in the input's memory format, skip empty work,
// and hand dense tensors to the backend's kernels. A backend is a struct with
//
//   static constexpr bool kReducedPrecision;  // whether it takes float16 and bfloat16
//   static void max_forward(const at::Tensor& input, at::Tensor& out, int64_t* indices /* or null */,
//                           const MaxPool2dProblem&);
//   static void max_backward(const at::Tensor& grad_out, const at::Tensor& indices,
//                            at::Tensor& grad_in, const MaxPool2dProblem&);
//   template <typename Axis> static void avg_forward(const at::Tensor& input, at::Tensor& out,
//                                                    const Pool2dProblem&, const AvgWindows<Axis>&);
//   template <typename Axis> static void avg_backward(const at::Tensor& grad_out, at::Tensor& grad_in,
//                                                     const Pool2dProblem&, const AvgWindows<Axis>&);
//
// and registers itself with Pool2dOps<Backend>::define_kernels(m) in its TORCH_LIBRARY_IMPL.

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/outputs.h"
#include "common/pool2d_args.h"

namespace fastdl {

template <typename Backend>
struct Pool2dOps {
  static constexpr bool kReduced = Backend::kReducedPrecision;

  static std::tuple<at::Tensor, at::Tensor> max_forward(const char* op, bool with_indices,
                                                        const at::Tensor& input, at::IntArrayRef kernel_size,
                                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                                        at::IntArrayRef dilation, bool ceil_mode) {
    const auto p = max_pool2d_problem(op, input, kernel_size, stride, padding, dilation, ceil_mode, kReduced);
    const c10::DeviceGuard guard(input.device());
    const at::Tensor x = p.dense(input);
    at::Tensor out = new_output(p.output_sizes(), x.options(), p.memory_format);
    at::Tensor indices;
    if (with_indices) indices = new_output(p.output_sizes(), x.options().dtype(at::kLong), p.memory_format);
    if (out.numel() > 0) Backend::max_forward(x, out, with_indices ? indices.data_ptr<int64_t>() : nullptr, p);
    return {out, indices};
  }

  static at::Tensor max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
    return std::get<0>(max_forward("fastdl.max_pool2d", false, input, kernel_size, stride, padding, dilation,
                                   ceil_mode));
  }

  static std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices(
      const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
      at::IntArrayRef dilation, bool ceil_mode) {
    return max_forward("fastdl.max_pool2d_with_indices", true, input, kernel_size, stride, padding, dilation,
                       ceil_mode);
  }

  static at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& indices, at::IntArrayRef kernel_size,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation, bool ceil_mode) {
    constexpr const char* op = "fastdl.max_pool2d_backward";
    const auto p = max_pool2d_problem(op, input, kernel_size, stride, padding, dilation, ceil_mode, kReduced);
    check_grad_output(op, p, grad_output, input);
    check_indices(op, p, indices, input);
    const c10::DeviceGuard guard(input.device());
    at::Tensor grad_input = new_output(p.input_sizes(), input.options(), p.memory_format);
    if (grad_input.numel() > 0) Backend::max_backward(p.dense(grad_output), p.dense(indices), grad_input, p);
    return grad_input;
  }

  template <typename Axis>
  static at::Tensor avg_forward(const at::Tensor& input, const Pool2dProblem& p, const AvgWindows<Axis>& win) {
    const c10::DeviceGuard guard(input.device());
    const at::Tensor x = p.dense(input);
    at::Tensor out = new_output(p.output_sizes(), x.options(), p.memory_format);
    if (out.numel() == 0) return out;
    if (win.identity()) return out.copy_(x);
    Backend::avg_forward(x, out, p, win);
    return out;
  }

  template <typename Axis>
  static at::Tensor avg_backward(const char* op, const at::Tensor& grad_output, const at::Tensor& input,
                                 const Pool2dProblem& p, const AvgWindows<Axis>& win) {
    check_grad_output(op, p, grad_output, input);
    const c10::DeviceGuard guard(input.device());
    at::Tensor grad_input = new_output(p.input_sizes(), input.options(), p.memory_format);
    if (grad_input.numel() == 0) return grad_input;
    const at::Tensor go = p.dense(grad_output);
    if (win.identity()) return grad_input.copy_(go);
    Backend::avg_backward(go, grad_input, p, win);
    return grad_input;
  }

  static at::Tensor avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                               std::optional<int64_t> divisor_override) {
    const auto p = avg_pool2d_problem("fastdl.avg_pool2d", input, kernel_size, stride, padding, ceil_mode,
                                      count_include_pad, divisor_override, kReduced);
    return avg_forward(input, p, p.windows);
  }

  static at::Tensor avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                        at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                        std::optional<int64_t> divisor_override) {
    constexpr const char* op = "fastdl.avg_pool2d_backward";
    const auto p = avg_pool2d_problem(op, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                      divisor_override, kReduced);
    return avg_backward(op, grad_output, input, p, p.windows);
  }

  static at::Tensor adaptive_avg_pool2d(const at::Tensor& input, at::IntArrayRef output_size) {
    const auto p = adaptive_avg_pool2d_problem("fastdl.adaptive_avg_pool2d", input, output_size, kReduced);
    return avg_forward(input, p, p.windows);
  }

  static at::Tensor adaptive_avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input) {
    constexpr const char* op = "fastdl.adaptive_avg_pool2d_backward";
    const auto p = adaptive_avg_pool2d_problem(op, input, adaptive_grad_size(op, grad_output), kReduced);
    return avg_backward(op, grad_output, input, p, p.windows);
  }

  static void define_kernels(torch::Library& m) {
    m.impl("max_pool2d", &max_pool2d);
    m.impl("max_pool2d_with_indices", &max_pool2d_with_indices);
    m.impl("max_pool2d_backward", &max_pool2d_backward);
    m.impl("avg_pool2d", &avg_pool2d);
    m.impl("avg_pool2d_backward", &avg_pool2d_backward);
    m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d);
    m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward);
  }
};

}  // namespace fastdl
