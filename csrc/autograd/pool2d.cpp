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
// Every op has its forward-mode formula (jvp) as well: pooling is linear in its input (max pooling
// once its maxima are found), each backward op linear in its output gradient.

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

template <typename Signature, typename... Args>
auto call_below_autograd(const c10::TypedOperatorHandle<Signature>& handle, Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return handle.call(std::forward<Args>(args)...);
}

// Each window's value of `values` (N, C, H, W or C, H, W) at the flat position in its plane that
// `indices` (max pooling's, of the output's shape) names.
Tensor read_at(const Tensor& values, const Tensor& indices) {
  return at::gather(values.flatten(-2), -1, indices.flatten(-2)).view(indices.sizes());
}

// Forward-mode AD of an op linear in its first tensor argument (average pooling, and every pooling
// backward op in its output gradient): the output's tangent is the op applied to that argument's
// tangent. The other tensors' tangents change nothing: a backward op's input gives it only a shape,
// or max pooling's maxima positions, which are locally constant.
template <typename Signature, typename... Args>
Tensor with_linear_tangent(Tensor output, const c10::TypedOperatorHandle<Signature>& handle, const Tensor& first,
                           const Args&... args) {
  if (const Tensor t = tangent(first); t.defined()) {
    const PrimalsOnly primals_only(false);
    set_tangent(output, handle.call(t, args...));
  }
  return output;
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
      out[0] = read_at(grads[0], saved[1]);
    }
    return out;
  }
};

Tensor max_pool2d_backward_autograd(const Tensor& grad, const Tensor& input, const Tensor& indices,
                                    IntArrayRef kernel, IntArrayRef stride, IntArrayRef padding,
                                    IntArrayRef dilation, bool ceil_mode) {
  static const auto handle = op<MaxPoolBackwardSig>("fastdl::max_pool2d_backward");
  Tensor out = records_grad(grad, input)
                   ? apply_on_primals<MaxPool2dBackward>(grad, input, indices, kernel, stride, padding, dilation,
                                                         ceil_mode)
                   : call_below_autograd(handle, grad, input, indices, kernel, stride, padding, dilation, ceil_mode);
  return with_linear_tangent(out, handle, grad, input, indices, kernel, stride, padding, dilation, ceil_mode);
}

Tensor max_pool2d_backward(const Tensor& grad, const Tensor& input, const Tensor& indices, const Window& w) {
  static const auto backward = op<MaxPoolBackwardSig>("fastdl::max_pool2d_backward");
  return backward.call(grad, input, indices, w.kernel, w.stride, w.padding, w.dilation, w.ceil_mode);
}

struct MaxPool2dWithIndices : torch::autograd::Function<MaxPool2dWithIndices> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, IntArrayRef kernel,
                               IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, bool ceil_mode,
                               Tensor* indices_out) {
    static const auto fwd = op<MaxPoolIndicesSig>("fastdl::max_pool2d_with_indices");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, indices] = fwd.call(input, kernel, stride, padding, dilation, ceil_mode);
    *indices_out = indices;  // not an output of the node (autograd_utils.h)
    ctx->save_for_backward({input, indices});
    Window{kernel.vec(), stride.vec(), padding.vec(), dilation.vec(), ceil_mode}.save(ctx);
    return {out};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return with_no_grads(Tensor(), 6);
    const auto saved = ctx->get_saved_variables();
    return with_no_grads(max_pool2d_backward(grads[0], saved[0], saved[1], Window::load(ctx)), 6);
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
  static const auto handle = op<AvgPoolBackwardSig>("fastdl::avg_pool2d_backward");
  Tensor out = records_grad(grad, input)
                   ? apply_on_primals<AvgPool2dBackward>(grad, input, kernel, stride, padding, ceil_mode,
                                                         count_include_pad, divisor_override)
                   : call_below_autograd(handle, grad, input, kernel, stride, padding, ceil_mode, count_include_pad,
                                         divisor_override);
  return with_linear_tangent(out, handle, grad, input, kernel, stride, padding, ceil_mode, count_include_pad,
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
      out[0] = fwd.call(grads[0], ctx->saved_data["output_size"].toIntVector());
    }
    return out;
  }
};

Tensor adaptive_avg_pool2d_backward_autograd(const Tensor& grad, const Tensor& input) {
  static const auto handle = op<AdaptiveBackwardSig>("fastdl::adaptive_avg_pool2d_backward");
  Tensor out = records_grad(grad, input) ? apply_on_primals<AdaptiveAvgPool2dBackward>(grad, input)
                                                         : call_below_autograd(handle, grad, input);
  return with_linear_tangent(out, handle, grad, input);
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
    return with_no_grads(bwd.call(grads[0], ctx->get_saved_variables()[0]), 1);
  }
};

std::tuple<Tensor, Tensor> max_pool2d_with_indices_autograd(const Tensor& input, IntArrayRef kernel,
                                                             IntArrayRef stride, IntArrayRef padding,
                                                             IntArrayRef dilation, bool ceil_mode) {
  static const auto handle = op<MaxPoolIndicesSig>("fastdl::max_pool2d_with_indices");
  std::tuple<Tensor, Tensor> outs;
  if (records_grad(input)) {
    Tensor indices;
    auto node_outs =
        apply_on_primals<MaxPool2dWithIndices>(input, kernel, stride, padding, dilation, ceil_mode, &indices);
    outs = {node_outs[0], indices};
  } else {
    outs = call_below_autograd(handle, input, kernel, stride, padding, dilation, ceil_mode);
  }
  if (const Tensor t = tangent(input); t.defined()) {
    const PrimalsOnly primals_only(false);
    set_tangent(std::get<0>(outs), read_at(t, std::get<1>(outs)));  // forward-mode AD
  }
  return outs;
}

Tensor max_pool2d_autograd(const Tensor& input, IntArrayRef kernel, IntArrayRef stride, IntArrayRef padding,
                           IntArrayRef dilation, bool ceil_mode) {
  static const auto handle = op<MaxPoolSig>("fastdl::max_pool2d");
  Tensor out = records_grad(input) ? apply_on_primals<MaxPool2d>(input, kernel, stride, padding, dilation, ceil_mode)
                                   : call_below_autograd(handle, input, kernel, stride, padding, dilation, ceil_mode);
  if (const Tensor t = tangent(input); t.defined()) {  // forward-mode AD: the maxima positions are needed
    static const auto with_indices = op<MaxPoolIndicesSig>("fastdl::max_pool2d_with_indices");
    const Tensor indices = std::get<1>(call_below_autograd(with_indices, input, kernel, stride, padding, dilation,
                                                           ceil_mode));
    const PrimalsOnly primals_only(false);
    set_tangent(out, read_at(t, indices));
  }
  return out;
}

Tensor avg_pool2d_autograd(const Tensor& input, IntArrayRef kernel, IntArrayRef stride, IntArrayRef padding,
                           bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  static const auto handle = op<AvgPoolSig>("fastdl::avg_pool2d");
  Tensor out = records_grad(input)
                   ? apply_on_primals<AvgPool2d>(input, kernel, stride, padding, ceil_mode, count_include_pad,
                                                 divisor_override)
                   : call_below_autograd(handle, input, kernel, stride, padding, ceil_mode, count_include_pad,
                                         divisor_override);
  return with_linear_tangent(out, handle, input, kernel, stride, padding, ceil_mode, count_include_pad,
                             divisor_override);
}

Tensor adaptive_avg_pool2d_autograd(const Tensor& input, IntArrayRef output_size) {
  static const auto handle = op<AdaptiveSig>("fastdl::adaptive_avg_pool2d");
  Tensor out = records_grad(input) ? apply_on_primals<AdaptiveAvgPool2d>(input, output_size)
                                   : call_below_autograd(handle, input, output_size);
  return with_linear_tangent(out, handle, input, output_size);
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
