#pragma once
// The 2-D convolution ops' entry points, written once for every backend: check the call
// (conv2d_args.h), set the device, allocate outputs, handle empty batches, and hand dense tensors
// to the backend. A backend is a struct with
//
//   static constexpr bool kReducedPrecision;   // whether it takes float16 / bfloat16
//   static void forward(const Conv2dForward&);
//   static void backward(const Conv2dBackward&);
//
// and registers itself with Conv2dOps<Backend>::define_kernels(m) in its TORCH_LIBRARY_IMPL.

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "common/conv2d_args.h"
#include "common/outputs.h"

namespace fastdl {

// What a forward kernel reads and writes. input and output are N,C,H,W tensors dense in
// shape.layout; weight is contiguous (K, Cg, R, S); bias has K values or is undefined.
struct Conv2dForward {
  at::Tensor input, weight, bias, output;
  Conv2dShape shape;
};

// What a backward kernel reads and writes: the gradients that are defined are wanted (grad_input
// dense in shape.layout like grad_output and input; grad_weight contiguous; grad_bias K values).
// The backend writes every element of each wanted gradient (grad_weight and grad_bias start
// uninitialized).
struct Conv2dBackward {
  at::Tensor grad_output, input, weight;
  at::Tensor grad_input, grad_weight, grad_bias;
  Conv2dShape shape;
};

template <typename Backend>
struct Conv2dOps {
  static at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                           int64_t groups) {
    constexpr const char* op = "fastdl.conv2d";
    const Conv2dProblem p =
        conv2d_problem(op, input, weight, stride, padding, dilation, groups, Backend::kReducedPrecision);
    check_bias(op, bias, input, p.shape.out_channels);
    const c10::DeviceGuard guard(input.device());
    at::Tensor output = new_output(p.output_sizes(), input.options(), p.memory_format);
    if (p.shape.batch == 0) return output;
    Conv2dForward f{p.dense(input), weight.contiguous(),
                    dense_or_none(bias),
                    p.batched ? output : output.unsqueeze(0), p.shape};
    Backend::forward(f);
    return output;
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(
      const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> mask) {
    constexpr const char* op = "fastdl.conv2d_backward";
    const Conv2dProblem p =
        conv2d_problem(op, input, weight, stride, padding, dilation, groups, Backend::kReducedPrecision);
    check_grad_output(op, grad_output, input, p.output_sizes());
    const c10::DeviceGuard guard(input.device());
    at::Tensor grad_input, grad_weight, grad_bias;
    if (mask[0]) grad_input = new_output(p.input_sizes(), input.options(), p.memory_format);
    if (mask[1]) grad_weight = new_output(weight.sizes(), weight.options());
    if (mask[2]) grad_bias = new_output({p.shape.out_channels}, weight.options());
    if (p.shape.batch == 0) {
      for (at::Tensor* g : {&grad_weight, &grad_bias}) {
        if (g->defined()) g->zero_();
      }
    } else if (mask[0] || mask[1] || mask[2]) {
      Conv2dBackward b{p.dense(grad_output), p.dense(input), weight.contiguous(),
                       grad_input.defined() && !p.batched ? grad_input.unsqueeze(0) : grad_input,
                       grad_weight, grad_bias, p.shape};
      Backend::backward(b);
    }
    return {or_empty(true, grad_input, input), or_empty(true, grad_weight, input), or_empty(true, grad_bias, input)};
  }

  static void define_kernels(torch::Library& m) {
    m.impl("conv2d", &conv2d);
    m.impl("conv2d_backward", &conv2d_backward);
  }
};

}  // namespace fastdl
