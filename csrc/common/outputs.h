#pragma once
// Allocation of op outputs. Kernels must write every element of what they return; with
// FASTDL_POISON_OUTPUTS=1 in the environment (the test suite sets it), outputs start as NaN
// (floating) or -1 (integer) instead of whatever memory held, so an unwritten element fails a test.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdlib>
#include <cstring>
#include <limits>

namespace fastdl {

inline bool poison_outputs() {
  static const bool enabled = [] {
    const char* v = std::getenv("FASTDL_POISON_OUTPUTS");
    return v != nullptr && std::strcmp(v, "0") != 0 && v[0] != '\0';
  }();
  return enabled;
}

inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options,
                             at::MemoryFormat memory_format = at::MemoryFormat::Contiguous) {
  at::Tensor t = at::empty(sizes, options.memory_format(memory_format));
  if (poison_outputs() && t.numel() > 0) {
    if (at::isFloatingType(t.scalar_type())) {
      t.fill_(std::numeric_limits<double>::quiet_NaN());
    } else {
      t.fill_(-1);
    }
  }
  return t;
}

// A backward op's result for a gradient it was not asked for (or did not compute): an empty tensor,
// since an op's schema returns tensors, not None.
inline at::Tensor or_empty(bool wanted, const at::Tensor& t, const at::Tensor& like) {
  return wanted && t.defined() ? t : like.new_empty({0});
}

}  // namespace fastdl
