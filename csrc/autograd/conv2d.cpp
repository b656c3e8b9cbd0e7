// Autograd of 2-D convolution, direct and Winograd, registered in C++ at the Autograd key (see
// autograd/pool2d.cpp for why not from Python). Each formula saves the input and the weight and
// calls its backward op for exactly the gradients autograd asks for. The backward ops have formulas
// too (double backward, e.g. a gradient penalty), and every op has its forward-mode formula (jvp),
// all written with the same two ops, so that any order of derivative works.

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

// The forward op's linearization at (x, w): conv(tx, w, tb) + conv(x, tw), any of the three
// directions undefined (zero); a tb alone is broadcast over `output`. It is the output's tangent in
// forward-mode AD, and the output gradient's gradient in double backward (below). forward(x, w, bias)
// calls the op (direct or Winograd) through the dispatcher, so a graph being recorded records it too.
template <typename Forward>
Tensor linearized_forward(const Tensor& input, const Tensor& weight, const Tensor& output, const Tensor& tx,
                          const Tensor& tw, const Tensor& tb, const Forward& forward) {
  Tensor total;
  if (tx.defined()) total = forward(tx, weight, tb.defined() ? OptTensor(tb) : std::nullopt);
  if (tw.defined()) accumulate(total, forward(input, tw, std::nullopt));
  if (tb.defined() && !tx.defined()) {
    std::vector<int64_t> shape(output.dim(), 1);
    shape[output.dim() - 3] = tb.numel();
    accumulate(total, tb.reshape(shape).expand_as(output).contiguous());
  }
  return total;
}

// Forward-mode AD of the forward op: the output's tangent from the arguments' tangents.
template <typename Forward>
void set_forward_tangent(const Tensor& output, const Tensor& input, const Tensor& weight, const OptTensor& bias,
                         const Forward& forward) {
  const Tensor tx = tangent(input), tw = tangent(weight), tb = tangent(bias);
  const PrimalsOnly primals_only(false);
  set_tangent(output, linearized_forward(input, weight, output, tx, tw, tb, forward));
}

// Double backward. For y = conv(x, w) + b the backward op returns gI = dX(gO, w) (the input gradient),
// gW = dW(x, gO) and gB = sum(gO); each is linear in gO and in x or w. Given the gradients ggI, ggW,
// ggB of a loss with respect to those three (any may be undefined: not used):
//   d/dgO = conv(ggI, w) + ggB + conv(x, ggW)   the linearization above
//   d/dx  = dX(gO, ggW)      the backward op's input gradient, with ggW as the weight
//   d/dw  = dW(ggI, gO)      the backward op's weight gradient, with ggI as the input
// as torch's _convolution_double_backward. backward(gO, x, w, mask) calls the backward op through the
// dispatcher.
template <typename Forward, typename Backward>
variable_list conv_double_backward(const Tensor& grad_output, const Tensor& input, const Tensor& weight,
                                   const variable_list& grads, const std::array<bool, 3>& needed,
                                   const Forward& forward, const Backward& backward) {
  const Tensor& ggI = grads[0];
  const Tensor& ggW = grads[1];
  Tensor d_grad_output, d_input, d_weight;
  if (needed[0]) d_grad_output = linearized_forward(input, weight, grad_output, ggI, ggW, grads[2], forward);
  if (needed[1] && ggW.defined()) d_input = std::get<0>(backward(grad_output, input, ggW, {true, false, false}));
  if (needed[2] && ggI.defined()) d_weight = std::get<1>(backward(grad_output, ggI, weight, {false, true, false}));
  return {d_grad_output, d_input, d_weight};
}

// Forward-mode AD of the backward op (forward over reverse, e.g. a Hessian-vector product): by the
// same linearity, the tangents of (gI, gW, gB) are backward(t_gO, x, w) + (dX(gO, t_w), dW(t_x, gO), 0).
template <typename Backward>
void set_backward_tangents(const std::tuple<Tensor, Tensor, Tensor>& grads, const Tensor& grad_output,
                           const Tensor& input, const Tensor& weight, const std::array<bool, 3>& mask,
                           const Backward& backward) {
  const Tensor t_grad_output = tangent(grad_output), tx = tangent(input), tw = tangent(weight);
  const PrimalsOnly primals_only(false);
  std::array<Tensor, 3> t;
  if (t_grad_output.defined()) std::tie(t[0], t[1], t[2]) = backward(t_grad_output, input, weight, mask);
  if (mask[0] && tw.defined()) accumulate(t[0], std::get<0>(backward(grad_output, input, tw, {true, false, false})));
  if (mask[1] && tx.defined()) accumulate(t[1], std::get<1>(backward(grad_output, tx, weight, {false, true, false})));
  if (mask[0]) set_tangent(std::get<0>(grads), t[0]);
  if (mask[1]) set_tangent(std::get<1>(grads), t[1]);
  if (mask[2]) set_tangent(std::get<2>(grads), t[2]);
}

// The autograd kernel of a backward op (direct or Winograd): its Function where the gradients'
// own gradient is recorded (apply_node), the op below autograd otherwise (backward), then the
// outputs' tangents where an argument has one.
template <typename ApplyNode, typename Backward>
std::tuple<Tensor, Tensor, Tensor> backward_autograd(const Tensor& grad_output, const Tensor& input,
                                                     const Tensor& weight, const std::array<bool, 3>& mask,
                                                     const ApplyNode& apply_node, const Backward& backward) {
  std::tuple<Tensor, Tensor, Tensor> grads;
  if (records_grad(grad_output, input, weight)) {
    const variable_list out = apply_node();
    grads = {out[0], out[1], out[2]};
  } else {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    grads = backward(grad_output, input, weight, mask);
  }
  if (any_tangent(grad_output, input, weight)) {
    set_backward_tangents(grads, grad_output, input, weight, mask, backward);
  }
  return grads;
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
    auto [grad_input, grad_weight, grad_bias] = backward_op.call(
        grads[0], saved[0], saved[1], stride, padding, dilation, ctx->saved_data["groups"].toInt(), mask);
    return {mask[0] ? grad_input : Tensor(), mask[1] ? grad_weight : Tensor(), mask[2] ? grad_bias : Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor conv2d_autograd(const Tensor& input, const Tensor& weight, const OptTensor& bias, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  Tensor out = records_grad(input, weight, bias)
                   ? apply_on_primals<Conv2d>(input, weight, bias, stride, padding, dilation, groups)
                   : call_forward(input, weight, bias, stride, padding, dilation, groups);  // no node, as ATen's
  if (any_tangent(input, weight, bias)) {
    static const auto forward_op = op<ConvSig>("fastdl::conv2d");
    set_forward_tangent(out, input, weight, bias, [&](const Tensor& x, const Tensor& w, const OptTensor& b) {
      return forward_op.call(x, w, b, stride, padding, dilation, groups);
    });
  }
  return out;
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

std::tuple<Tensor, Tensor, Tensor> conv2d_backward_autograd(const Tensor& grad_output, const Tensor& input,
                                                            const Tensor& weight, at::IntArrayRef stride,
                                                            at::IntArrayRef padding, at::IntArrayRef dilation,
                                                            int64_t groups, std::array<bool, 3> mask) {
  static const auto backward_op = op<ConvBackwardSig>("fastdl::conv2d_backward");
  return backward_autograd(
      grad_output, input, weight, mask,
      [&] {
        return apply_on_primals<Conv2dBackward>(grad_output, input, weight, stride, padding, dilation, groups, mask);
      },
      [&](const Tensor& g, const Tensor& x, const Tensor& w, std::array<bool, 3> m) {
        return backward_op.call(g, x, w, stride, padding, dilation, groups, m);
      });
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
    auto [grad_input, grad_weight, grad_bias] =
        backward_op.call(grads[0], saved[0], saved[1], ctx->saved_data["padding"].toIntVector(),
                         ctx->saved_data["tile"].toInt(), mask);
    return {mask[0] ? grad_input : Tensor(), mask[1] ? grad_weight : Tensor(), mask[2] ? grad_bias : Tensor(),
            Tensor(), Tensor()};
  }
};

Tensor conv2d_winograd_autograd(const Tensor& input, const Tensor& weight, const OptTensor& bias,
                                at::IntArrayRef padding, int64_t tile) {
  Tensor out = records_grad(input, weight, bias) ? apply_on_primals<WinogradConv2d>(input, weight, bias, padding, tile)
                                                 : call_winograd(input, weight, bias, padding, tile);
  if (any_tangent(input, weight, bias)) {
    static const auto forward_op = op<WinogradSig>("fastdl::conv2d_winograd");
    set_forward_tangent(out, input, weight, bias, [&](const Tensor& x, const Tensor& w, const OptTensor& b) {
      return forward_op.call(x, w, b, padding, tile);
    });
  }
  return out;
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
  static const auto backward_op = op<WinogradBackwardSig>("fastdl::conv2d_winograd_backward");
  return backward_autograd(
      grad_output, input, weight, mask,
      [&] { return apply_on_primals<WinogradConv2dBackward>(grad_output, input, weight, padding, tile, mask); },
      [&](const Tensor& g, const Tensor& x, const Tensor& w, std::array<bool, 3> m) {
        return backward_op.call(g, x, w, padding, tile, m);
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  m.impl("conv2d", &conv2d_autograd);
  m.impl("conv2d_backward", &conv2d_backward_autograd);
  m.impl("conv2d_winograd", &conv2d_winograd_autograd);
  m.impl("conv2d_winograd_backward", &conv2d_winograd_backward_autograd);
}

}  // namespace fastdl
