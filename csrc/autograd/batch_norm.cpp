// Autograd of batch normalization, registered in C++ at the Autograd key (see autograd/pool2d.cpp
// for why not from Python). The forward op's formula saves the input, the weight and the statistics
// it normalized with, and calls the backward op for exactly the gradients autograd asks for. The
// backward op has a formula too (double backward, e.g. a gradient penalty), written with ATen's
// tensor operations: it runs only when the gradient of a gradient is asked for. Forward-mode AD
// (jvp) has a formula for the forward op; the backward op refuses it (an error, not a lost tangent).

#include <ATen/TensorOperators.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
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

struct Channels {
  std::vector<int64_t> reduce;  // every dimension but 1
  std::vector<int64_t> shape;   // (1, C, 1, ...): a per-channel value broadcast against the input
  double count = 0;             // values per channel

  explicit Channels(const Tensor& input) : shape(input.dim(), 1) {
    for (int64_t d = 0; d < input.dim(); ++d) {
      if (d != 1) reduce.push_back(d);
    }
    shape[1] = input.size(1);
    if (input.size(1) > 0) count = double(input.numel() / input.size(1));
  }
  Tensor sum(const Tensor& t) const { return t.sum(reduce, /*keepdim=*/true); }
  Tensor mean(const Tensor& t) const { return sum(t).div(count); }
  Tensor broadcast(const Tensor& per_channel) const { return per_channel.reshape(shape); }
};

// The input normalized per channel, x^ = (x - mean) s with s the inverse standard deviation (all in
// the statistics' dtype), and the projection P(u) = u - S(u)/M - x^ S(u x^)/M that training's input
// gradient applies (notation of the double backward below).
struct Normalized {
  Channels ch;
  Tensor s, x_hat;

  Normalized(const Channels& channels, const Tensor& x, const Tensor& mean, const Tensor& invstd)
      : ch(channels), s(invstd), x_hat((x - mean) * invstd) {}
  Tensor project(const Tensor& u) const { return u - ch.mean(u) - x_hat * ch.mean(u * x_hat); }
};

// Forward-mode AD of the forward op, in the notation of the double backward below (x^ = (x - mean) s):
//   training: t_y = w s P(t_x) + t_w x^ + t_b        eval: t_y = w s t_x + t_w x^ + t_b
// The statistics' outputs get no tangent (they are not differentiable outputs in reverse mode either).
void set_output_tangent(const Tensor& output, const Tensor& input, const OptTensor& weight, const OptTensor& bias,
                        const Tensor& mean, const Tensor& invstd, bool training) {
  const Tensor tx = tangent(input), tw = tangent(weight), tb = tangent(bias);
  const PrimalsOnly primals_only(false);
  const Channels ch(input);
  const auto cast = [&](const Tensor& t) { return t.to(invstd.scalar_type()); };
  const Normalized n(ch, cast(input), ch.broadcast(mean), ch.broadcast(invstd));
  Tensor t;
  if (tx.defined()) {
    const Tensor u = training ? n.project(cast(tx)) : cast(tx);
    accumulate(t, (given(weight) ? u * ch.broadcast(cast(*weight)) : u) * n.s);
  }
  if (tw.defined()) accumulate(t, n.x_hat * ch.broadcast(cast(tw)));
  if (tb.defined()) accumulate(t, ch.broadcast(cast(tb)).expand_as(n.x_hat));
  set_tangent(output, t.to(output.scalar_type()));
}

struct BatchNorm : torch::autograd::Function<BatchNorm> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const OptTensor& weight,
                               const OptTensor& bias, const OptTensor& running_mean, const OptTensor& running_var,
                               bool training, double momentum, double eps, std::array<Tensor, 2>* stats) {
    static const auto forward_op = op<BatchNormSig>("fastdl::batch_norm");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, mean, invstd] = forward_op.call(input, weight, bias, running_mean, running_var, training, momentum, eps);
    *stats = {mean, invstd};  // not outputs of the node (autograd_utils.h)
    ctx->save_for_backward({input, weight.value_or(Tensor()), mean, invstd});
    ctx->saved_data["training"] = training;
    // Autograd numbers only the tensors that were given: where weight and bias sit among them.
    ctx->saved_data["weight_edge"] = given(weight) ? int64_t{1} : int64_t{-1};
    ctx->saved_data["bias_edge"] = given(bias) ? int64_t{given(weight) ? 2 : 1} : int64_t{-1};
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = op<BatchNormBackwardSig>("fastdl::batch_norm_backward");
    if (!grads[0].defined()) return variable_list(9);
    const auto saved = ctx->get_saved_variables();
    const auto needs = [&](const char* edge) {
      const int64_t e = ctx->saved_data[edge].toInt();
      return e >= 0 && ctx->needs_input_grad(e);
    };
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), needs("weight_edge"), needs("bias_edge")};
    const OptTensor weight = saved[1].defined() ? OptTensor(saved[1]) : std::nullopt;
    auto [grad_input, grad_weight, grad_bias] =
        backward_op.call(grads[0], saved[0], weight, saved[2], saved[3], ctx->saved_data["training"].toBool(), mask);
    return {mask[0] ? grad_input : Tensor(), mask[1] ? grad_weight : Tensor(), mask[2] ? grad_bias : Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor> batch_norm_autograd(const Tensor& input, const OptTensor& weight,
                                                       const OptTensor& bias, const OptTensor& running_mean,
                                                       const OptTensor& running_var, bool training, double momentum,
                                                       double eps) {
  std::tuple<Tensor, Tensor, Tensor> outs;
  if (!records_grad(input, weight, bias)) {
    // No gradient: skip the autograd node (measured 4 us per call), as ATen's own ops do.
    static const auto forward_op = op<BatchNormSig>("fastdl::batch_norm");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    outs = forward_op.call(input, weight, bias, running_mean, running_var, training, momentum, eps);
  } else {
    std::array<Tensor, 2> stats;
    auto node_outs =
        apply_on_primals<BatchNorm>(input, weight, bias, running_mean, running_var, training, momentum, eps, &stats);
    outs = {node_outs[0], stats[0], stats[1]};
  }
  if (any_tangent(input, weight, bias)) {
    set_output_tangent(std::get<0>(outs), input, weight, bias, std::get<1>(outs), std::get<2>(outs), training);
  }
  return outs;
}

// Double backward. Per channel, with S(u) the sum of u over the channel's M values, x^ = (x - mean) s
// (s the inverse standard deviation) and P(u) = u - S(u)/M - x^ S(u x^)/M (the projection that the
// first-order input gradient applies), the backward op computes
//   training: gI = w s P(gO),  gW = S(gO x^),  gB = S(gO)
//   eval:     gI = w s gO      (the mean and s are the running statistics: constants)
// Given a loss's gradients ggI, ggW, ggB with respect to those (an undefined one: not used):
//   d/dgO = w s P(ggI) + ggW x^ + ggB                                     (eval: w s ggI + ggW x^ + ggB)
//   d/dw  = s S(ggI P(gO))                                                (eval: s S(ggI gO))
//   d/dx  = s P(ggW gO) - w s^2 [(A - B m) x^/M + m P(ggI) + B P(gO)/M]   (eval: s ggW gO)
//           with A = S(ggI (gO - S(gO)/M)), B = S(ggI x^), m = S(gO x^)/M,
// from the vector-Jacobian product of x^ (s P(u)) and ds/dx = -s^2 x^/M. When this gradient is itself
// recorded (a third derivative), training recomputes the mean and s from x so that their dependence
// on x is recorded too; otherwise the saved ones serve. Computed in the statistics' dtype (float32 for
// 16-bit inputs), returned in each argument's dtype.
variable_list batch_norm_double_backward(const Tensor& grad_output, const Tensor& input, const Tensor& weight,
                                         const Tensor& save_mean, const Tensor& save_invstd, bool training,
                                         const variable_list& grads, const std::array<bool, 3>& needed) {
  const Channels ch(input);
  const auto cast = [&](const Tensor& t) { return t.defined() ? t.to(save_invstd.scalar_type()) : t; };
  const Tensor gO = cast(grad_output), x = cast(input), ggI = cast(grads[0]);
  const Tensor ggW = grads[1].defined() ? ch.broadcast(cast(grads[1])) : Tensor();
  const Tensor ggB = grads[2].defined() ? ch.broadcast(cast(grads[2])) : Tensor();
  const Tensor w = weight.defined() ? ch.broadcast(cast(weight)) : Tensor();
  Tensor mean = ch.broadcast(save_mean), invstd = ch.broadcast(save_invstd);
  if (training && at::GradMode::is_enabled()) {
    mean = ch.mean(x);
    const Tensor var = ch.mean((x - mean).square());
    invstd = (var + (invstd.square().reciprocal() - var).detach()).rsqrt();  // the saved value, as a function of x
  }
  const Normalized n(ch, x, mean, invstd);
  const Tensor &s = n.s, &x_hat = n.x_hat;
  const auto times_w = [&](const Tensor& t) { return w.defined() ? t * w : t; };

  Tensor d_grad_output, d_input, d_weight;
  if (needed[0]) {
    if (ggI.defined()) accumulate(d_grad_output, times_w((training ? n.project(ggI) : ggI) * s));
    if (ggW.defined()) accumulate(d_grad_output, ggW * x_hat);
    if (ggB.defined()) accumulate(d_grad_output, ggB.expand_as(gO));
    if (d_grad_output.defined()) d_grad_output = d_grad_output.to(grad_output.scalar_type());
  }
  if (needed[1]) {
    if (ggW.defined()) accumulate(d_input, (training ? n.project(ggW * gO) : ggW * gO) * s);
    if (training && ggI.defined()) {
      const Tensor m = ch.mean(gO * x_hat), B = ch.sum(ggI * x_hat), A = ch.sum(ggI * (gO - ch.mean(gO)));
      const Tensor inner = (A - B * m) * x_hat / ch.count + m * n.project(ggI) + B * n.project(gO) / ch.count;
      accumulate(d_input, -times_w(inner * s.square()));
    }
    if (d_input.defined()) d_input = d_input.to(input.scalar_type());
  }
  if (needed[2] && ggI.defined()) {
    d_weight = (s * ch.sum(ggI * (training ? n.project(gO) : gO))).reshape({-1}).to(weight.scalar_type());
  }
  return {d_grad_output, d_input, d_weight};
}

// The backward op's Function. Autograd numbers only the tensors that were given, so the weight's
// edge is 2 only when one was given; the saved statistics never require a gradient.
struct BatchNormBackward : torch::autograd::Function<BatchNormBackward> {
  static variable_list forward(AutogradContext* ctx, const Tensor& grad_output, const Tensor& input,
                               const OptTensor& weight, const Tensor& save_mean, const Tensor& save_invstd,
                               bool training, std::array<bool, 3> mask) {
    static const auto backward_op = op<BatchNormBackwardSig>("fastdl::batch_norm_backward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_input, grad_weight, grad_bias] =
        backward_op.call(grad_output, input, weight, save_mean, save_invstd, training, mask);
    ctx->save_for_backward({grad_output, input, weight.value_or(Tensor()), save_mean, save_invstd});
    ctx->saved_data["training"] = training;
    ctx->set_materialize_grads(false);  // the outputs the mask leaves out (empty) get no gradient
    return {grad_input, grad_weight, grad_bias};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> needed{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                     saved[2].defined() && ctx->needs_input_grad(2)};
    variable_list out = batch_norm_double_backward(saved[0], saved[1], saved[2], saved[3], saved[4],
                                                   ctx->saved_data["training"].toBool(), grads, needed);
    out.resize(7);  // none for the statistics, training, mask
    return out;
  }
};

std::tuple<Tensor, Tensor, Tensor> batch_norm_backward_autograd(const Tensor& grad_output, const Tensor& input,
                                                                const OptTensor& weight, const Tensor& save_mean,
                                                                const Tensor& save_invstd, bool training,
                                                                std::array<bool, 3> mask) {
  check_no_tangent("fastdl.batch_norm_backward", grad_output, input, weight);
  if (!records_grad(grad_output, input, weight)) {
    static const auto backward_op = op<BatchNormBackwardSig>("fastdl::batch_norm_backward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return backward_op.call(grad_output, input, weight, save_mean, save_invstd, training, mask);
  }
  auto out = apply_on_primals<BatchNormBackward>(grad_output, input, weight, save_mean, save_invstd, training, mask);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  m.impl("batch_norm", &batch_norm_autograd);
  m.impl("batch_norm_backward", &batch_norm_backward_autograd);
  m.impl("batch_norm_relu_inference", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace fastdl
