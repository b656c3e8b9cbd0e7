// Autograd of the pooling ops, registered in C++ at the Autograd key. A formula registered from
// Python (torch.library.register_autograd) runs Python on every call, gradient or not: measured 7 to
// 10 us per call on the dev machine, more than a small pooling kernel takes on a GPU. Here a call
// that needs no gradient costs what an ATen op does.
//
// Each forward op's formula saves what its backward op needs and calls it. The backward ops are
// linear in the output gradient, and have formulas too (double backward, e.g. a gradient penalty):
// the gradient of a backward op's result is mapped back by the forward op (average pooling) or read
// at the saved indices (max pooling). Their gradient with respect to the input is zero: a tensor of
// zeros, as torch's (a loss that reaches the input only that way gets a zero gradient, not an error).

#include <ATen/ops/gather.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>
#include <utility>

#include "autograd/autograd_utils.h"

namespace fastdl {
namespace {

using at::IntArrayRef;
using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The window arguments of a max or average pooling call, kept for backward as one list of integers
// (one saved_data entry instead of five: each costs a map insertion and an IValue per call).
struct Window {
  std::vector<int64_t> kernel, stride, padding, dilation;
  bool ceil_mode;

  // [ceil_mode, size of each of the four lists, then the lists]
  void save(AutogradContext* ctx) const {
    const std::array<const std::vector<int64_t>*, 4> parts{&kernel, &stride, &padding, &dilation};
    std::vector<int64_t> all{int64_t(ceil_mode)};
    for (const auto* part : parts) all.push_back(int64_t(part->size()));
    for (const auto* part : parts) all.insert(all.end(), part->begin(), part->end());
    ctx->saved_data["window"] = std::move(all);
  }
  static Window load(AutogradContext* ctx) {
    const std::vector<int64_t> all = ctx->saved_data["window"].toIntVector();
    Window w{{}, {}, {}, {}, all[0] != 0};
    auto next = all.begin() + 5;
    for (int i = 0; i < 4; ++i) {
      std::vector<int64_t>& part = i == 0 ? w.kernel : i == 1 ? w.stride : i == 2 ? w.padding : w.dilation;
      part.assign(next, next + all[1 + i]);
      next += all[1 + i];
    }
    return w;
  }
};

// Gradients of the non-tensor arguments: none.
variable_list with_no_grads(Tensor grad_input, size_t others) {
  variable_list grads(1 + others);
  grads[0] = std::move(grad_input);
  return grads;
}

// Whether a call must record a gradient; otherwise the op runs below autograd directly, without
// an autograd node (measured 4 us per call), as ATen's own ops do.
bool records_grad(const Tensor& input) { return at::GradMode::is_enabled() && input.requires_grad(); }

template <typename Signature, typename... Args>
auto call_below_autograd(const c10::TypedOperatorHandle<Signature>& handle, Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return handle.call(std::forward<Args>(args)...);
}

// A backward op's gradients (one per argument, `count`): the input's, zeros, where it is needed.
variable_list zero_input_grad(AutogradContext* ctx, const Tensor& input, size_t count) {
  variable_list grads(count);
  if (ctx->needs_input_grad(1)) grads[1] = at::zeros_like(input);
  return grads;
}

// Max pooling's backward op, differentiable: its result's gradient ggI, read at the indices of the
// maxima, is the gradient of the output gradient.
struct MaxPool2dBackward : torch::autograd::Function<MaxPool2dBackward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& grad, const Tensor& input, const Tensor& indices,
                        IntArrayRef kernel, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                        bool ceil_mode) {
    static const auto bwd = op<MaxPoolBackwardSig>("fastdl::max_pool2d_backward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({input, indices});
    return bwd.call(grad, input, indices, kernel, stride, padding, dilation, ceil_mode);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    variable_list out = zero_input_grad(ctx, saved[0], 8);
    if (ctx->needs_input_grad(0)) {
      out[0] = at::gather(grads[0].flatten(-2), -1, saved[1].flatten(-2)).view(saved[1].sizes());
    }
    return out;
  }
};

Tensor max_pool2d_backward_autograd(const Tensor& grad, const Tensor& input, const Tensor& indices,
                                    IntArrayRef kernel, IntArrayRef stride, IntArrayRef padding,
                                    IntArrayRef dilation, bool ceil_mode) {
  if (!records_grad(grad) && !records_grad(input)) {
    static const auto handle = op<MaxPoolBackwardSig>("fastdl::max_pool2d_backward");
    return call_below_autograd(handle, grad, input, indices, kernel, stride, padding, dilation, ceil_mode);
  }
  return MaxPool2dBackward::apply(grad, input, indices, kernel, stride, padding, dilation, ceil_mode);
}

Tensor max_pool2d_backward(const Tensor& grad, const Tensor& input, const Tensor& indices, const Window& w) {
  static const auto backward = op<MaxPoolBackwardSig>("fastdl::max_pool2d_backward");
  const BelowAutogradUnlessRecording below_autograd;
  return backward.call(grad, input, indices, w.kernel, w.stride, w.padding, w.dilation, w.ceil_mode);
}

struct MaxPool2dWithIndices : torch::autograd::Function<MaxPool2dWithIndices> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, IntArrayRef kernel,
                               IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, bool ceil_mode) {
    static const auto fwd = op<MaxPoolIndicesSig>("fastdl::max_pool2d_with_indices");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, indices] = fwd.call(input, kernel, stride, padding, dilation, ceil_mode);
    ctx->save_for_backward({input, indices});
    Window{kernel.vec(), stride.vec(), padding.vec(), dilation.vec(), ceil_mode}.save(ctx);
    ctx->mark_non_differentiable({indices});
    ctx->set_materialize_grads(false);  // else every backward allocates and zero-fills the indices' gradient
    return {out, indices};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return with_no_grads(Tensor(), 5);
    const auto saved = ctx->get_saved_variables();
    return with_no_grads(max_pool2d_backward(grads[0], saved[0], saved[1], Window::load(ctx)), 5);
  }
};

// The values-only (inference) op keeps no indices; if it is differentiated anyway, backward
// recomputes them from the saved input.
struct MaxPool2d : torch::autograd::Function<MaxPool2d> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, IntArrayRef kernel, IntArrayRef stride,
                        IntArrayRef padding, IntArrayRef dilation, bool ceil_mode) {
    static const auto fwd = op<MaxPoolSig>("fastdl::max_pool2d");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({input});
    Window{kernel.vec(), stride.vec(), padding.vec(), dilation.vec(), ceil_mode}.save(ctx);
    return fwd.call(input, kernel, stride, padding, dilation, ceil_mode);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto with_indices = op<MaxPoolIndicesSig>("fastdl::max_pool2d_with_indices");
    const Tensor input = ctx->get_saved_variables()[0];
    const Window w = Window::load(ctx);
    const Tensor indices = std::get<1>(with_indices.call(input, w.kernel, w.stride, w.padding, w.dilation, w.ceil_mode));
    return with_no_grads(max_pool2d_backward(grads[0], input, indices, w), 5);
  }
};

// Average pooling's backward op, differentiable: it is the adjoint of the forward op (a linear map),
// so the gradient of its output gradient is the forward op applied to its result's gradient.
struct AvgPool2dBackward : torch::autograd::Function<AvgPool2dBackward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& grad, const Tensor& input, IntArrayRef kernel,
                        IntArrayRef stride, IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                        std::optional<int64_t> divisor_override) {
    static const auto bwd = op<AvgPoolBackwardSig>("fastdl::avg_pool2d_backward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    Window{kernel.vec(), stride.vec(), padding.vec(), {}, ceil_mode}.save(ctx);
    ctx->saved_data["count_include_pad"] = count_include_pad;
    ctx->saved_data["divisor_override"] = divisor_override;
    ctx->save_for_backward({input});
    return bwd.call(grad, input, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto fwd = op<AvgPoolSig>("fastdl::avg_pool2d");
    variable_list out = zero_input_grad(ctx, ctx->get_saved_variables()[0], 8);
    if (ctx->needs_input_grad(0)) {
      const Window w = Window::load(ctx);
      const c10::IValue divisor = ctx->saved_data["divisor_override"];
      const BelowAutogradUnlessRecording below_autograd;
      out[0] = fwd.call(grads[0], w.kernel, w.stride, w.padding, w.ceil_mode,
                        ctx->saved_data["count_include_pad"].toBool(),
                        divisor.isNone() ? std::nullopt : std::optional<int64_t>(divisor.toInt()));
    }
    return out;
  }
};

Tensor avg_pool2d_backward_autograd(const Tensor& grad, const Tensor& input, IntArrayRef kernel, IntArrayRef stride,
                                    IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                    std::optional<int64_t> divisor_override) {
  if (!records_grad(grad) && !records_grad(input)) {
    static const auto handle = op<AvgPoolBackwardSig>("fastdl::avg_pool2d_backward");
    return call_below_autograd(handle, grad, input, kernel, stride, padding, ceil_mode, count_include_pad,
                               divisor_override);
  }
  return AvgPool2dBackward::apply(grad, input, kernel, stride, padding, ceil_mode, count_include_pad,
                                  divisor_override);
}

struct AdaptiveAvgPool2dBackward : torch::autograd::Function<AdaptiveAvgPool2dBackward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& grad, const Tensor& input) {
    static const auto bwd = op<AdaptiveBackwardSig>("fastdl::adaptive_avg_pool2d_backward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->saved_data["output_size"] = grad.sizes().slice(grad.dim() - 2).vec();
    ctx->save_for_backward({input});
    return bwd.call(grad, input);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto fwd = op<AdaptiveSig>("fastdl::adaptive_avg_pool2d");
    variable_list out = zero_input_grad(ctx, ctx->get_saved_variables()[0], 2);
    if (ctx->needs_input_grad(0)) {
      const BelowAutogradUnlessRecording below_autograd;
      out[0] = fwd.call(grads[0], ctx->saved_data["output_size"].toIntVector());
    }
    return out;
  }
};

Tensor adaptive_avg_pool2d_backward_autograd(const Tensor& grad, const Tensor& input) {
  if (!records_grad(grad) && !records_grad(input)) {
    static const auto handle = op<AdaptiveBackwardSig>("fastdl::adaptive_avg_pool2d_backward");
    return call_below_autograd(handle, grad, input);
  }
  return AdaptiveAvgPool2dBackward::apply(grad, input);
}

struct AvgPool2d : torch::autograd::Function<AvgPool2d> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, IntArrayRef kernel, IntArrayRef stride,
                        IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                        std::optional<int64_t> divisor_override) {
    static const auto fwd = op<AvgPoolSig>("fastdl::avg_pool2d");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({input});
    Window{kernel.vec(), stride.vec(), padding.vec(), {}, ceil_mode}.save(ctx);
    ctx->saved_data["count_include_pad"] = count_include_pad;
    ctx->saved_data["divisor_override"] = divisor_override;
    return fwd.call(input, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd = op<AvgPoolBackwardSig>("fastdl::avg_pool2d_backward");
    const Window w = Window::load(ctx);
    const BelowAutogradUnlessRecording below_autograd;
    const c10::IValue divisor = ctx->saved_data["divisor_override"];
    return with_no_grads(
        bwd.call(grads[0], ctx->get_saved_variables()[0], w.kernel, w.stride, w.padding, w.ceil_mode,
                 ctx->saved_data["count_include_pad"].toBool(),
                 divisor.isNone() ? std::nullopt : std::optional<int64_t>(divisor.toInt())),
        6);
  }
};

struct AdaptiveAvgPool2d : torch::autograd::Function<AdaptiveAvgPool2d> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, IntArrayRef output_size) {
    static const auto fwd = op<AdaptiveSig>("fastdl::adaptive_avg_pool2d");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({input});
    return fwd.call(input, output_size);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd = op<AdaptiveBackwardSig>("fastdl::adaptive_avg_pool2d_backward");
    const BelowAutogradUnlessRecording below_autograd;
    return with_no_grads(bwd.call(grads[0], ctx->get_saved_variables()[0]), 1);
  }
};

std::tuple<Tensor, Tensor> max_pool2d_with_indices_autograd(const Tensor& input, IntArrayRef kernel,
                                                             IntArrayRef stride, IntArrayRef padding,
                                                             IntArrayRef dilation, bool ceil_mode) {
  if (!records_grad(input)) {
    static const auto handle = op<MaxPoolIndicesSig>("fastdl::max_pool2d_with_indices");
    return call_below_autograd(handle, input, kernel, stride, padding, dilation, ceil_mode);
  }
  auto outs = MaxPool2dWithIndices::apply(input, kernel, stride, padding, dilation, ceil_mode);
  return {outs[0], outs[1]};
}

Tensor max_pool2d_autograd(const Tensor& input, IntArrayRef kernel, IntArrayRef stride, IntArrayRef padding,
                           IntArrayRef dilation, bool ceil_mode) {
  if (!records_grad(input)) {
    static const auto handle = op<MaxPoolSig>("fastdl::max_pool2d");
    return call_below_autograd(handle, input, kernel, stride, padding, dilation, ceil_mode);
  }
  return MaxPool2d::apply(input, kernel, stride, padding, dilation, ceil_mode);
}

Tensor avg_pool2d_autograd(const Tensor& input, IntArrayRef kernel, IntArrayRef stride, IntArrayRef padding,
                           bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  if (!records_grad(input)) {
    static const auto handle = op<AvgPoolSig>("fastdl::avg_pool2d");
    return call_below_autograd(handle, input, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override);
  }
  return AvgPool2d::apply(input, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override);
}

Tensor adaptive_avg_pool2d_autograd(const Tensor& input, IntArrayRef output_size) {
  if (!records_grad(input)) {
    static const auto handle = op<AdaptiveSig>("fastdl::adaptive_avg_pool2d");
    return call_below_autograd(handle, input, output_size);
  }
  return AdaptiveAvgPool2d::apply(input, output_size);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, Autograd, m) {
  m.impl("max_pool2d", &max_pool2d_autograd);
  m.impl("max_pool2d_with_indices", &max_pool2d_with_indices_autograd);
  m.impl("avg_pool2d", &avg_pool2d_autograd);
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d_autograd);
  m.impl("max_pool2d_backward", &max_pool2d_backward_autograd);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_autograd);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward_autograd);
}

}  // namespace fastdl
