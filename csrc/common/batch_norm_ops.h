#pragma once
// The batch normalization ops' entry points, written once for every backend: check the call
// (batch_norm_args.h), set the device, allocate outputs, handle empty inputs as PyTorch does, and
// hand dense tensors to the backend. A backend is a struct with
//
//   static constexpr bool kReducedPrecision;              // whether it takes float16 / bfloat16
//   static void forward(const BatchNormForward&);
//   static void backward(const BatchNormBackward&);
//
// and registers itself with BatchNormOps<Backend>::define_kernels(m) in its TORCH_LIBRARY_IMPL.

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "common/batch_norm_args.h"
#include "common/outputs.h"

namespace fastdl {

// What a forward kernel reads and writes. Optional tensors are undefined when absent.
struct BatchNormForward {
  at::Tensor input, output;                               // dense in problem.memory_format
  at::Tensor weight, bias, running_mean, running_var;     // C values (param_type) or undefined
  at::Tensor save_mean, save_invstd;                      // C values (stats_type), written
  bool training;
  double momentum, eps;
  BatchNormProblem problem;
  bool relu = false;  // eval only: output relu(y)
};

// What a backward kernel reads and writes; an undefined gradient is not wanted.
struct BatchNormBackward {
  at::Tensor grad_output, input;                          // dense in problem.memory_format
  at::Tensor weight;                                      // or undefined (scale 1)
  at::Tensor save_mean, save_invstd;
  at::Tensor grad_input, grad_weight, grad_bias;          // written where defined
  bool training;
  BatchNormProblem problem;
};

template <typename Backend>
struct BatchNormOps {
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm(
      const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
      const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
      bool training, double momentum, double eps) {
    const auto p = batch_norm_problem("fastdl.batch_norm", input, weight, bias, running_mean, running_var,
                                      training, Backend::kReducedPrecision);
    BatchNormForward f = forward(p, input, weight, bias, running_mean, running_var, training, momentum, eps, false);
    return {f.output, f.save_mean, f.save_invstd};
  }

  static at::Tensor batch_norm_relu_inference(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                              const std::optional<at::Tensor>& bias, const at::Tensor& running_mean,
                                              const at::Tensor& running_var, double eps) {
    const auto p = batch_norm_problem("fastdl.batch_norm_relu_inference", input, weight, bias, running_mean,
                                      running_var, /*training=*/false, Backend::kReducedPrecision);
    return forward(p, input, weight, bias, running_mean, running_var, false, 0.0, eps, true).output;
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward(
      const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& weight,
      const at::Tensor& save_mean, const at::Tensor& save_invstd, bool training, std::array<bool, 3> mask) {
    constexpr const char* op = "fastdl.batch_norm_backward";
    const auto p = batch_norm_input(op, input, {{"weight", &weight}}, Backend::kReducedPrecision);
    TORCH_CHECK(grad_output.defined(), op, ": expected grad_output to be a tensor, but got None");
    check_same_device(op, "grad_output", grad_output, "input", input);
    check_same_dtype(op, "grad_output", grad_output, "input", input);
    check_sizes(op, "grad_output", grad_output, input.sizes());
    check_saved_stats(op, p, save_mean, save_invstd, input);
    const c10::DeviceGuard guard(input.device());
    const auto params = input.options().dtype(p.param_type);
    BatchNormBackward b{p.dense(grad_output), p.dense(input), dense_or_none(weight), save_mean.contiguous(),
                        save_invstd.contiguous(), {}, {}, {}, training, p};
    if (mask[0]) b.grad_input = new_output(input.sizes(), b.input.options(), p.memory_format);
    if (mask[1]) b.grad_weight = new_output({p.shape.channels}, params);
    if (mask[2]) b.grad_bias = new_output({p.shape.channels}, params);
    if (p.shape.count() == 0) {
      for (at::Tensor* g : {&b.grad_weight, &b.grad_bias}) {
        if (g->defined()) g->zero_();
      }
    } else if (p.shape.channels > 0) {
      Backend::backward(b);
    }
    const auto or_empty = [&](const at::Tensor& t, const at::TensorOptions& o) {
      return t.defined() ? t : at::empty({0}, o);
    };
    return {or_empty(b.grad_input, input.options()), or_empty(b.grad_weight, params), or_empty(b.grad_bias, params)};
  }

  static void define_kernels(torch::Library& m) {
    m.impl("batch_norm", &batch_norm);
    m.impl("batch_norm_relu_inference", &batch_norm_relu_inference);
    m.impl("batch_norm_backward", &batch_norm_backward);
  }

 private:
  static BatchNormForward forward(const BatchNormProblem& p, const at::Tensor& input,
                                  const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                  const std::optional<at::Tensor>& running_mean,
                                  const std::optional<at::Tensor>& running_var, bool training, double momentum,
                                  double eps, bool relu) {
    const c10::DeviceGuard guard(input.device());
    BatchNormForward f{p.dense(input), {}, dense_or_none(weight), dense_or_none(bias),
                       running_mean.value_or(at::Tensor()), running_var.value_or(at::Tensor()), {}, {},
                       training, momentum, eps, p, relu};
    f.output = new_output(input.sizes(), f.input.options(), p.memory_format);
    const auto stats = f.input.options().dtype(p.stats_type);
    f.save_mean = new_output({p.shape.channels}, stats);
    f.save_invstd = new_output({p.shape.channels}, stats);
    if (p.shape.count() == 0 && training) {
      // No values: nothing to normalize, and the running statistics stay as they are (as in torch).
      f.save_mean.zero_();
      f.save_invstd.zero_();
    } else if (p.shape.channels > 0) {
      Backend::forward(f);
    }
    return f;
  }
};

}  // namespace fastdl
