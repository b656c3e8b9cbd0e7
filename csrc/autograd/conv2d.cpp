// Autograd of 2-D convolution, direct and Winograd, registered in C++ at the Autograd key (see
// autograd/pool2d.cpp for why not from Python). Each formula saves the input and the weight and
// calls its backward op for exactly the gradients autograd asks for; the backward ops get torch's
// not-implemented fallback, so double backward raises an error naming them.

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

Tensor call_forward(const Tensor& input, const Tensor& weight, const OptTensor& bias, at::IntArrayRef stride,
                    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  static const auto forward_op = op<ConvSig>("fastdl::conv2d");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return forward_op.call(input, weight, bias, stride, padding, dilation, groups);
}

struct Conv2d : torch::autograd::Function<Conv2d> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight, const OptTensor& bias,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                        int64_t groups) {
    Tensor out = call_forward(input, weight, bias, stride, padding, dilation, groups);
    ctx->save_for_backward({input, weight});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["has_bias"] = given(bias);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = op<ConvBackwardSig>("fastdl::conv2d_backward");
    const auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   has_bias && ctx->needs_input_grad(2)};
    const auto stride = ctx->saved_data["stride"].toIntVector();
    const auto padding = ctx->saved_data["padding"].toIntVector();
    const auto dilation = ctx->saved_data["dilation"].toIntVector();
    const BelowAutogradUnlessRecording below_autograd;
    auto [grad_input, grad_weight, grad_bias] = backward_op.call(
        grads[0], saved[0], saved[1], stride, padding, dilation, ctx->saved_data["groups"].toInt(), mask);
    return {mask[0] ? grad_input : Tensor(), mask[1] ? grad_weight : Tensor(), mask[2] ? grad_bias : Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor conv2d_autograd(const Tensor& input, const Tensor& weight, const OptTensor& bias, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const bool bias_grad = given(bias) && bias->requires_grad();
  if (!at::GradMode::is_enabled() || !(input.requires_grad() || weight.requires_grad() || bias_grad)) {
    return call_forward(input, weight, bias, stride, padding, dilation, groups);  // no node, as ATen's ops
  }
  return Conv2d::apply(input, weight, bias, stride, padding, dilation, groups);
}

Tensor call_winograd(const Tensor& input, const Tensor& weight, const OptTensor& bias, at::IntArrayRef padding,
                     int64_t tile) {
  static const auto forward_op = op<WinogradSig>("fastdl::conv2d_winograd");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return forward_op.call(input, weight, bias, padding, tile);
}

struct WinogradConv2d : torch::autograd::Function<WinogradConv2d> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight, const OptTensor& bias,
                        at::IntArrayRef padding, int64_t tile) {
    Tensor out = call_winograd(input, weight, bias, padding, tile);
    ctx->save_for_backward({input, weight});
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["tile"] = tile;
    ctx->saved_data["has_bias"] = given(bias);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = op<WinogradBackwardSig>("fastdl::conv2d_winograd_backward");
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)};
    const BelowAutogradUnlessRecording below_autograd;
    auto [grad_input, grad_weight, grad_bias] =
        backward_op.call(grads[0], saved[0], saved[1], ctx->saved_data["padding"].toIntVector(),
                         ctx->saved_data["tile"].toInt(), mask);
    return {mask[0] ? grad_input : Tensor(), mask[1] ? grad_weight : Tensor(), mask[2] ? grad_bias : Tensor(),
            Tensor(), Tensor()};
  }
};

Tensor conv2d_winograd_autograd(const Tensor& input, const Tensor& weight, const OptTensor& bias,
                                at::IntArrayRef padding, int64_t tile) {
  const bool bias_grad = given(bias) && bias->requires_grad();
  if (!at::GradMode::is_enabled() || !(input.requires_grad() || weight.requires_grad() || bias_grad)) {
    return call_winograd(input, weight, bias, padding, tile);
  }
  return WinogradConv2d::apply(input, weight, bias, padding, tile);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  m.impl("conv2d", &conv2d_autograd);
  m.impl("conv2d_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("conv2d_winograd", &conv2d_winograd_autograd);
  m.impl("conv2d_winograd_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace fastdl
