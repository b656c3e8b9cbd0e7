// Autograd of 2-D convolution, direct and Winograd, registered in C++ at the Autograd key (see
// autograd/pool2d.cpp for why not from Python). Each formula saves the input and the weight and
// calls its backward op for exactly the gradients autograd asks for. The backward ops have formulas
// too (double backward, e.g. a gradient penalty), written with the same two ops, so every order of
// derivative works.

#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "autograd/autograd_utils.h"

namespace fastdl {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Double backward. For y = conv(x, w) + b the backward op returns gI = dX(gO, w) (the input gradient),
// gW = dW(x, gO) and gB = sum(gO); each is linear in gO and in x or w. Given the gradients ggI, ggW,
// ggB of a loss with respect to those three (any may be undefined: not used):
//   d/dgO = conv(ggI, w) + ggB + conv(x, ggW)
//   d/dx  = dX(gO, ggW)      the backward op's input gradient, with ggW as the weight
//   d/dw  = dW(ggI, gO)      the backward op's weight gradient, with ggI as the input
// as torch's _convolution_double_backward. forward(x, w, bias) and backward(gO, x, w, mask) call the
// op pair (direct or Winograd) through the dispatcher, so a graph being recorded records these too.
template <typename Forward, typename Backward>
variable_list conv_double_backward(const Tensor& grad_output, const Tensor& input, const Tensor& weight,
                                   const variable_list& grads, const std::array<bool, 3>& needed,
                                   const Forward& forward, const Backward& backward) {
  const Tensor& ggI = grads[0];
  const Tensor& ggW = grads[1];
  const Tensor& ggB = grads[2];
  Tensor d_grad_output, d_input, d_weight;
  if (needed[0]) {
    if (ggI.defined()) d_grad_output = forward(ggI, weight, ggB.defined() ? OptTensor(ggB) : std::nullopt);
    if (ggW.defined()) {
      Tensor term = forward(input, ggW, std::nullopt);
      d_grad_output = d_grad_output.defined() ? d_grad_output.add(term) : term;
    }
    if (ggB.defined() && !ggI.defined()) {
      std::vector<int64_t> shape(grad_output.dim(), 1);
      shape[grad_output.dim() - 3] = ggB.numel();
      Tensor term = ggB.reshape(shape).expand_as(grad_output);
      d_grad_output = d_grad_output.defined() ? d_grad_output.add(term) : term.contiguous();
    }
  }
  if (needed[1] && ggW.defined()) d_input = std::get<0>(backward(grad_output, input, ggW, {true, false, false}));
  if (needed[2] && ggI.defined()) d_weight = std::get<1>(backward(grad_output, ggI, weight, {false, true, false}));
  return {d_grad_output, d_input, d_weight};
}

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

// Direct convolution's backward op, differentiable (double backward).
struct Conv2dBackward : torch::autograd::Function<Conv2dBackward> {
  static variable_list forward(AutogradContext* ctx, const Tensor& grad_output, const Tensor& input,
                               const Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> mask) {
    static const auto backward_op = op<ConvBackwardSig>("fastdl::conv2d_backward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_input, grad_weight, grad_bias] =
        backward_op.call(grad_output, input, weight, stride, padding, dilation, groups, mask);
    ctx->save_for_backward({grad_output, input, weight});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->set_materialize_grads(false);  // the outputs the mask leaves out (empty) get no gradient
    return {grad_input, grad_weight, grad_bias};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto forward_op = op<ConvSig>("fastdl::conv2d");
    static const auto backward_op = op<ConvBackwardSig>("fastdl::conv2d_backward");
    const auto saved = ctx->get_saved_variables();
    const auto stride = ctx->saved_data["stride"].toIntVector();
    const auto padding = ctx->saved_data["padding"].toIntVector();
    const auto dilation = ctx->saved_data["dilation"].toIntVector();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const BelowAutogradUnlessRecording below_autograd;
    variable_list out = conv_double_backward(
        saved[0], saved[1], saved[2], grads,
        {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)},
        [&](const Tensor& x, const Tensor& w, const OptTensor& b) {
          return forward_op.call(x, w, b, stride, padding, dilation, groups);
        },
        [&](const Tensor& g, const Tensor& x, const Tensor& w, std::array<bool, 3> mask) {
          return backward_op.call(g, x, w, stride, padding, dilation, groups, mask);
        });
    out.resize(8);  // no gradients for stride, padding, dilation, groups, mask
    return out;
  }
};

bool any_requires_grad(const Tensor& a, const Tensor& b, const Tensor& c) {
  return at::GradMode::is_enabled() && (a.requires_grad() || b.requires_grad() || c.requires_grad());
}

std::tuple<Tensor, Tensor, Tensor> conv2d_backward_autograd(const Tensor& grad_output, const Tensor& input,
                                                            const Tensor& weight, at::IntArrayRef stride,
                                                            at::IntArrayRef padding, at::IntArrayRef dilation,
                                                            int64_t groups, std::array<bool, 3> mask) {
  if (!any_requires_grad(grad_output, input, weight)) {
    static const auto backward_op = op<ConvBackwardSig>("fastdl::conv2d_backward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return backward_op.call(grad_output, input, weight, stride, padding, dilation, groups, mask);
  }
  auto out = Conv2dBackward::apply(grad_output, input, weight, stride, padding, dilation, groups, mask);
  return {out[0], out[1], out[2]};
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

// Winograd's backward op, differentiable the same way with the Winograd op pair.
struct WinogradConv2dBackward : torch::autograd::Function<WinogradConv2dBackward> {
  static variable_list forward(AutogradContext* ctx, const Tensor& grad_output, const Tensor& input,
                               const Tensor& weight, at::IntArrayRef padding, int64_t tile,
                               std::array<bool, 3> mask) {
    static const auto backward_op = op<WinogradBackwardSig>("fastdl::conv2d_winograd_backward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_input, grad_weight, grad_bias] = backward_op.call(grad_output, input, weight, padding, tile, mask);
    ctx->save_for_backward({grad_output, input, weight});
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["tile"] = tile;
    ctx->set_materialize_grads(false);
    return {grad_input, grad_weight, grad_bias};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto forward_op = op<WinogradSig>("fastdl::conv2d_winograd");
    static const auto backward_op = op<WinogradBackwardSig>("fastdl::conv2d_winograd_backward");
    const auto saved = ctx->get_saved_variables();
    const auto padding = ctx->saved_data["padding"].toIntVector();
    const int64_t tile = ctx->saved_data["tile"].toInt();
    const BelowAutogradUnlessRecording below_autograd;
    variable_list out = conv_double_backward(
        saved[0], saved[1], saved[2], grads,
        {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)},
        [&](const Tensor& x, const Tensor& w, const OptTensor& b) { return forward_op.call(x, w, b, padding, tile); },
        [&](const Tensor& g, const Tensor& x, const Tensor& w, std::array<bool, 3> mask) {
          return backward_op.call(g, x, w, padding, tile, mask);
        });
    out.resize(6);  // no gradients for padding, tile, mask
    return out;
  }
};

std::tuple<Tensor, Tensor, Tensor> conv2d_winograd_backward_autograd(const Tensor& grad_output, const Tensor& input,
                                                                     const Tensor& weight, at::IntArrayRef padding,
                                                                     int64_t tile, std::array<bool, 3> mask) {
  if (!any_requires_grad(grad_output, input, weight)) {
    static const auto backward_op = op<WinogradBackwardSig>("fastdl::conv2d_winograd_backward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return backward_op.call(grad_output, input, weight, padding, tile, mask);
  }
  auto out = WinogradConv2dBackward::apply(grad_output, input, weight, padding, tile, mask);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  m.impl("conv2d", &conv2d_autograd);
  m.impl("conv2d_backward", &conv2d_backward_autograd);
  m.impl("conv2d_winograd", &conv2d_winograd_autograd);
  m.impl("conv2d_winograd_backward", &conv2d_winograd_backward_autograd);
}

}  // namespace fastdl
