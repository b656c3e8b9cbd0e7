#pragma once
// Helpers of the C++ autograd formulas (csrc/autograd/*.cpp).

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>

#include <optional>
#include <utility>

#include "autograd/op_signatures.h"
#include "common/checks.h"

namespace fastdl {

// A typed handle of a fastdl op; callers keep it in a function-local static (looked up once).
template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Whether a call must record a gradient: grad mode on and a tensor argument (or a given optional one)
// requires one. Otherwise an op runs below autograd directly, without a node (measured 4 us per call),
// as ATen's own ops do.
inline bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
inline bool requires_grad(const std::optional<at::Tensor>& t) { return t && requires_grad(*t); }

template <typename... Tensors>
bool records_grad(const Tensors&... tensors) {
  return at::GradMode::is_enabled() && (requires_grad(tensors) || ...);
}

// total += term, where an undefined tensor is zero (the terms of a derivative some of whose
// directions are absent).
inline void accumulate(at::Tensor& total, const at::Tensor& term) {
  if (term.defined()) total = total.defined() ? total.add(term) : term;
}

// In a backward formula whose backward op has torch's boxed not-implemented fallback (the RNN layers):
// calls below autograd unless a graph of the gradient is being recorded (create_graph=True), when
// they go through the fallback, which makes double backward fail clearly. Without it every backward
// call paid for the boxed fallback. The other backward ops have unboxed autograd kernels (double
// backward and forward-mode formulas) and are called through them, as ATen's formulas call ATen's ops.
struct BelowAutogradUnlessRecording {
  std::optional<at::AutoDispatchBelowADInplaceOrView> guard;
  BelowAutogradUnlessRecording() {
    if (!at::GradMode::is_enabled()) guard.emplace();
  }
};

// Forward-mode AD (torch.autograd.forward_ad; torch.func.jvp, jacfwd): an argument's tangent, or an
// undefined tensor. Without a formula an op's output would carry no tangent: a silent zero.
inline at::Tensor tangent(const at::Tensor& t) { return t.defined() ? t._fw_grad(/*level=*/0) : at::Tensor(); }
inline at::Tensor tangent(const std::optional<at::Tensor>& t) { return t ? tangent(*t) : at::Tensor(); }

template <typename... Tensors>
bool any_tangent(const Tensors&... tensors) {
  return (tangent(tensors).defined() || ...);
}

// For ops without forward-mode formulas: an error naming the op instead of a missing tangent.
template <typename... Tensors>
void check_no_tangent(const char* op, const Tensors&... tensors) {
  TORCH_CHECK(!any_tangent(tensors...), op,
              ": forward-mode AD (torch.func.jvp, jacfwd, hessian, torch.autograd.forward_ad) is not supported");
}

// Gives an op's output the tangent computed for it (nothing when undefined: no argument had one).
inline void set_tangent(const at::Tensor& output, const at::Tensor& output_tangent) {
  if (output_tangent.defined()) output._set_fw_grad(output_tangent, /*level=*/0, /*is_inplace_op=*/false);
}

// While a tangent is computed from the primal arguments, their own tangents are switched off, so
// the ops it calls (through the dispatcher: a reverse-mode graph is still recorded) see primals only.
using PrimalsOnly = c10::AutoFwGradMode;

// Outputs that are not differentiable (batch norm's statistics, max pooling's indices, the RNN
// workspaces) leave a Function's forward through a pointer argument, not as outputs: compiled
// autograd (torch._dynamo's compiled_autograd) refuses Functions that mark outputs non-differentiable.
//
// torch's C++ custom Functions refuse arguments that carry tangents ("jvp is not implemented for the
// c++ API"): the reverse-mode node is made on the primals, and the kernel sets the outputs' tangents.
template <typename Node, typename... Args>
auto apply_on_primals(Args&&... args) {
  const PrimalsOnly primals_only(false);
  return Node::apply(std::forward<Args>(args)...);
}

}  // namespace fastdl
