#pragma once
// Argument checks shared by every op's CPU and CUDA entry points. Each message starts with the op as
// users call it ("fastdl.max_pool2d") and names the argument, so a bad call is never a mystery.

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <array>
#include <optional>
#include <string>

namespace fastdl {

// Whether an optional tensor argument was passed as a tensor (None and undefined tensors are not).
inline bool given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// A dense copy of an optional tensor argument, or an undefined tensor when it was not given.
inline at::Tensor dense_or_none(const std::optional<at::Tensor>& t) {
  return given(t) ? t->contiguous() : at::Tensor();
}

// A dtype as PyTorch users write it (float32, not ATen's Float).
inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    default: return c10::toString(t);
  }
}

// A tensor argument's dtype must be a floating type this backend's kernels implement: float32 and
// float64 everywhere, float16 and bfloat16 too where `reduced_precision` (the CUDA kernels).
inline void check_floating(const char* op, const char* name, const at::Tensor& t,
                           bool reduced_precision) {
  const auto dt = t.scalar_type();
  const bool full = dt == at::kFloat || dt == at::kDouble;
  const bool reduced = dt == at::kHalf || dt == at::kBFloat16;
  TORCH_CHECK(full || (reduced && reduced_precision), op, ": expected ", name, " to be ",
              reduced_precision ? "float32, float64, float16 or bfloat16"
                                : "float32 or float64 on this device",
              ", but got ", dtype_name(dt));
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t,
                              const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": expected ", name, " on the same device as ",
              ref_name, " (", ref.device(), "), but got ", t.device());
}

inline void check_same_dtype(const char* op, const char* name, const at::Tensor& t,
                             const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": expected ", name, " to have the dtype of ",
              ref_name, " (", dtype_name(ref.scalar_type()), "), but got ", dtype_name(t.scalar_type()));
}

inline void check_sizes(const char* op, const char* name, const at::Tensor& t,
                        at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, op, ": expected ", name, " of shape ", expected, ", but got ",
              t.sizes());
}

// A 2-D size argument given as one int (used for both dimensions) or two, as torch.nn.functional
// accepts; an empty list means `fallback` (stride defaults to kernel_size).
inline std::array<int64_t, 2> pair_arg(const char* op, const char* name, at::IntArrayRef v,
                                       at::IntArrayRef fallback = {}) {
  if (v.empty() && !fallback.empty()) v = fallback;
  TORCH_CHECK(v.size() == 1 || v.size() == 2, op, ": expected ", name,
              " to be a single int or a pair of ints, but got ", v);
  return {v[0], v.size() == 2 ? v[1] : v[0]};
}

}  // namespace fastdl
