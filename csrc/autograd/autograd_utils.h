#pragma once
// Helpers of the C++ autograd formulas (csrc/autograd/*.cpp).

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>

#include <optional>

#include "autograd/op_signatures.h"
#include "common/checks.h"

namespace fastdl {

// A typed handle of a fastdl op; callers keep it in a function-local static (looked up once).
template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// In a backward formula: calls below autograd unless a graph of the gradient is being recorded
// (create_graph=True), when they go through the backward op's autograd fallback, which makes
// double backward fail clearly. Without it every backward call paid for a boxed fallback.
struct BelowAutogradUnlessRecording {
  std::optional<at::AutoDispatchBelowADInplaceOrView> guard;
  BelowAutogradUnlessRecording() {
    if (!at::GradMode::is_enabled()) guard.emplace();
  }
};

}  // namespace fastdl
