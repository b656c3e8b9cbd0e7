// Autograd of batch normalization, registered in C++ at the Autograd key (see autograd/pool2d.cpp
// for why not from Python). The forward op's formula saves the input, the weight and the statistics
// it normalized with, and calls the backward op for exactly the gradients autograd asks for. The
// backward op gets torch's not-implemented fallback: double backward raises an error naming it.

#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "autograd/autograd_utils.h"

namespace fastdl {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct BatchNorm : torch::autograd::Function<BatchNorm> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const OptTensor& weight,
                               const OptTensor& bias, const OptTensor& running_mean, const OptTensor& running_var,
                               bool training, double momentum, double eps) {
    static const auto forward_op = op<BatchNormSig>("fastdl::batch_norm");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, mean, invstd] = forward_op.call(input, weight, bias, running_mean, running_var, training, momentum, eps);
    ctx->save_for_backward({input, weight.value_or(Tensor()), mean, invstd});
    ctx->saved_data["training"] = training;
    // Autograd numbers only the tensors that were given: where weight and bias sit among them.
    ctx->saved_data["weight_edge"] = given(weight) ? int64_t{1} : int64_t{-1};
    ctx->saved_data["bias_edge"] = given(bias) ? int64_t{given(weight) ? 2 : 1} : int64_t{-1};
    ctx->mark_non_differentiable({mean, invstd});
    ctx->set_materialize_grads(false);  // else every backward allocates zeros for mean and invstd
    return {out, mean, invstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = op<BatchNormBackwardSig>("fastdl::batch_norm_backward");
    if (!grads[0].defined()) return variable_list(8);
    const auto saved = ctx->get_saved_variables();
    const auto needs = [&](const char* edge) {
      const int64_t e = ctx->saved_data[edge].toInt();
      return e >= 0 && ctx->needs_input_grad(e);
    };
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), needs("weight_edge"), needs("bias_edge")};
    const OptTensor weight = saved[1].defined() ? OptTensor(saved[1]) : std::nullopt;
    const BelowAutogradUnlessRecording below_autograd;
    auto [grad_input, grad_weight, grad_bias] =
        backward_op.call(grads[0], saved[0], weight, saved[2], saved[3], ctx->saved_data["training"].toBool(), mask);
    return {mask[0] ? grad_input : Tensor(), mask[1] ? grad_weight : Tensor(), mask[2] ? grad_bias : Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor> batch_norm_autograd(const Tensor& input, const OptTensor& weight,
                                                       const OptTensor& bias, const OptTensor& running_mean,
                                                       const OptTensor& running_var, bool training, double momentum,
                                                       double eps) {
  const auto wants = [](const OptTensor& t) { return given(t) && t->requires_grad(); };
  if (!at::GradMode::is_enabled() || !(input.requires_grad() || wants(weight) || wants(bias))) {
    // No gradient: skip the autograd node (measured 4 us per call), as ATen's own ops do.
    static const auto forward_op = op<BatchNormSig>("fastdl::batch_norm");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return forward_op.call(input, weight, bias, running_mean, running_var, training, momentum, eps);
  }
  auto outs = BatchNorm::apply(input, weight, bias, running_mean, running_var, training, momentum, eps);
  return {outs[0], outs[1], outs[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  m.impl("batch_norm", &batch_norm_autograd);
  m.impl("batch_norm_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("batch_norm_relu_inference", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace fastdl
