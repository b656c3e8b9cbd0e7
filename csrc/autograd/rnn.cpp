// Autograd of the LSTM and GRU layer ops, registered in C++ at the Autograd key (see
// autograd/pool2d.cpp for why not from Python). The forward formula runs the op with
// keep_workspace=True, saves the inputs, the output and the workspace, and calls the backward op
// for the gradients autograd asks for; a call that needs no gradient skips the node and the
// workspace. The backward ops get torch's not-implemented fallback: double backward raises an error;
// so does forward-mode AD (jvp) of the layers, rather than returning outputs without a tangent.

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

OptTensor maybe(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// Autograd numbers only the tensors that were given: the edges of bias_ih and bias_hh, which follow
// the `first_bias` required tensors, or -1.
void save_bias_edges(AutogradContext* ctx, int64_t first_bias, const OptTensor& b_ih, const OptTensor& b_hh) {
  ctx->saved_data["bias_ih_edge"] = given(b_ih) ? first_bias : int64_t{-1};
  ctx->saved_data["bias_hh_edge"] = given(b_hh) ? first_bias + (given(b_ih) ? 1 : 0) : int64_t{-1};
}

bool needs_edge(AutogradContext* ctx, const char* edge) {
  const int64_t e = ctx->saved_data[edge].toInt();
  return e >= 0 && ctx->needs_input_grad(e);
}

Tensor if_needed(bool needed, const Tensor& t) { return needed ? t : Tensor(); }

struct LstmLayer : torch::autograd::Function<LstmLayer> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& h0, const Tensor& c0,
                               const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                               const OptTensor& w_hr, std::vector<int64_t> batch_sizes, bool reverse,
                               std::array<Tensor, 3>* workspace) {
    static const auto forward_op = op<LstmSig>("fastdl::lstm_layer");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, hy, cy, gates, cells, hidden] =
        forward_op.call(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, true);
    *workspace = {gates, cells, hidden};  // not outputs of the node (autograd_utils.h)
    ctx->save_for_backward({input, h0, c0, w_ih, w_hh, w_hr.value_or(Tensor()), out, gates, cells, hidden});
    ctx->saved_data["batch_sizes"] = batch_sizes;
    ctx->saved_data["reverse"] = reverse;
    save_bias_edges(ctx, 5, b_ih, b_hh);
    // w_hr's edge follows the biases'.
    ctx->saved_data["weight_hr_edge"] = given(w_hr) ? 5 + int64_t(given(b_ih)) + int64_t(given(b_hh)) : int64_t{-1};
    // Else every backward allocates and zero-fills gradients for unused final states; the backward op
    // takes absent gradients as zeros itself.
    ctx->set_materialize_grads(false);
    return {out, hy, cy};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = op<LstmBackwardSig>("fastdl::lstm_layer_backward");
    const auto s = ctx->get_saved_variables();
    const bool bias_ih = needs_edge(ctx, "bias_ih_edge"), bias_hh = needs_edge(ctx, "bias_hh_edge");
    const bool w_hr = needs_edge(ctx, "weight_hr_edge");
    const std::array<bool, 3> mask{ctx->needs_input_grad(0),
                                   ctx->needs_input_grad(3) || ctx->needs_input_grad(4) || w_hr, bias_ih || bias_hh};
    const auto batch_sizes = ctx->saved_data["batch_sizes"].toIntVector();
    const BelowAutogradUnlessRecording below_autograd;
    auto [gx, gh0, gc0, gw_ih, gw_hh, gw_hr, gb_ih, gb_hh] =
        backward_op.call(maybe(grads[0]), maybe(grads[1]), maybe(grads[2]), s[0], s[1], s[2], s[3], s[4], maybe(s[5]),
                         s[6], s[7], s[8], s[9], batch_sizes, ctx->saved_data["reverse"].toBool(), mask);
    return {if_needed(mask[0], gx), if_needed(ctx->needs_input_grad(1), gh0), if_needed(ctx->needs_input_grad(2), gc0),
            if_needed(ctx->needs_input_grad(3), gw_ih), if_needed(ctx->needs_input_grad(4), gw_hh),
            if_needed(bias_ih, gb_ih), if_needed(bias_hh, gb_hh), if_needed(w_hr, gw_hr), Tensor(), Tensor(),
            Tensor()};
  }
};

struct GruLayer : torch::autograd::Function<GruLayer> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& h0, const Tensor& w_ih,
                               const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                               std::vector<int64_t> batch_sizes, bool reverse, Tensor* workspace) {
    static const auto forward_op = op<GruSig>("fastdl::gru_layer");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, hy, saved] = forward_op.call(input, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, true);
    *workspace = saved;  // not an output of the node (autograd_utils.h)
    ctx->save_for_backward({input, h0, w_ih, w_hh, out, saved});
    ctx->saved_data["batch_sizes"] = batch_sizes;
    ctx->saved_data["reverse"] = reverse;
    save_bias_edges(ctx, 4, b_ih, b_hh);
    ctx->set_materialize_grads(false);  // as LstmLayer
    return {out, hy};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_op = op<GruBackwardSig>("fastdl::gru_layer_backward");
    const auto s = ctx->get_saved_variables();
    const bool bias_ih = needs_edge(ctx, "bias_ih_edge"), bias_hh = needs_edge(ctx, "bias_hh_edge");
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(2) || ctx->needs_input_grad(3),
                                   bias_ih || bias_hh};
    const auto batch_sizes = ctx->saved_data["batch_sizes"].toIntVector();
    const BelowAutogradUnlessRecording below_autograd;
    auto [gx, gh0, gw_ih, gw_hh, gb_ih, gb_hh] =
        backward_op.call(maybe(grads[0]), maybe(grads[1]), s[0], s[1], s[2], s[3], s[4], s[5], batch_sizes,
                         ctx->saved_data["reverse"].toBool(), mask);
    return {if_needed(mask[0], gx), if_needed(ctx->needs_input_grad(1), gh0), if_needed(ctx->needs_input_grad(2), gw_ih),
            if_needed(ctx->needs_input_grad(3), gw_hh), if_needed(bias_ih, gb_ih), if_needed(bias_hh, gb_hh), Tensor(),
            Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_autograd(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, at::IntArrayRef batch_sizes, bool reverse,
    bool keep_workspace) {
  check_no_tangent("fastdl.lstm_layer", input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr);
  if (!records_grad(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)) {
    static const auto forward_op = op<LstmSig>("fastdl::lstm_layer");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return forward_op.call(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, keep_workspace);
  }
  std::array<Tensor, 3> workspace;
  auto o = LstmLayer::apply(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes.vec(), reverse, &workspace);
  return {o[0], o[1], o[2], workspace[0], workspace[1], workspace[2]};
}

std::tuple<Tensor, Tensor, Tensor> gru_layer_autograd(const Tensor& input, const Tensor& h0, const Tensor& w_ih,
                                                      const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                                      at::IntArrayRef batch_sizes, bool reverse, bool keep_workspace) {
  check_no_tangent("fastdl.gru_layer", input, h0, w_ih, w_hh, b_ih, b_hh);
  if (!records_grad(input, h0, w_ih, w_hh, b_ih, b_hh)) {
    static const auto forward_op = op<GruSig>("fastdl::gru_layer");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return forward_op.call(input, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, keep_workspace);
  }
  Tensor workspace;
  auto o = GruLayer::apply(input, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes.vec(), reverse, &workspace);
  return {o[0], o[1], workspace};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  m.impl("lstm_layer", &lstm_layer_autograd);
  m.impl("lstm_layer_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("gru_layer", &gru_layer_autograd);
  m.impl("gru_layer_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace fastdl
