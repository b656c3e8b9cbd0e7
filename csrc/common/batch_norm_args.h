#pragma once
// Checking a batch normalization call and describing it for the kernels, shared by the CPU and CUDA
// entry points (batch_norm_ops.h), with torch.nn.functional.batch_norm's rules and messages.

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <optional>
#include <utility>

#include "common/batch_norm_math.h"
#include "common/checks.h"

namespace fastdl {

struct BatchNormProblem {
  BatchNormShape shape;
  at::MemoryFormat memory_format;  // of input, output and gradients as the kernels see them
  at::ScalarType stats_type;       // of save_mean / save_invstd: float32, float64 for float64 input
  at::ScalarType param_type;       // of weight, bias, running statistics and their gradients

  at::Tensor dense(const at::Tensor& t) const { return t.contiguous(memory_format); }
};

// A per-channel parameter: C elements, on input's device, in the input's dtype or, for a float16 or
// bfloat16 input, in float32 (mixed precision as PyTorch and cuDNN allow).
inline void check_channel_param(const char* op, const char* name, const std::optional<at::Tensor>& t,
                                const at::Tensor& input, int64_t channels) {
  if (!given(t)) return;
  TORCH_CHECK(t->dim() == 1 && t->numel() == channels, op, ": expected ", name, " to hold ", channels,
              " values (one per channel of input), but got shape ", t->sizes());
  check_same_device(op, name, *t, "input", input);
  const auto in = input.scalar_type(), dt = t->scalar_type();
  const bool reduced = in == at::kHalf || in == at::kBFloat16;
  TORCH_CHECK(dt == in || (reduced && dt == at::kFloat), op, ": expected ", name, " to be ", dtype_name(in),
              reduced ? " or float32" : "", " like input, but got ", dtype_name(dt));
}

// The input and the parameters every batch normalization call takes.
inline BatchNormProblem batch_norm_input(const char* op, const at::Tensor& input,
                                         std::initializer_list<std::pair<const char*, const std::optional<at::Tensor>*>> params,
                                         bool reduced_precision) {
  TORCH_CHECK(input.defined(), op, ": expected input to be a tensor, but got None");
  const int64_t dim = input.dim();
  TORCH_CHECK(dim >= 2 && dim <= 4, op, ": expected input of shape (N, C), (N, C, L) or (N, C, H, W), ",
              "but got shape ", input.sizes());
  check_floating(op, "input", input, reduced_precision);
  BatchNormProblem p{};
  p.shape.batch = input.size(0);
  p.shape.channels = input.size(1);
  p.shape.spatial = 1;
  for (int64_t d = 2; d < dim; ++d) p.shape.spatial *= input.size(d);
  p.memory_format = dim == 4 ? input.suggest_memory_format() : at::MemoryFormat::Contiguous;
  // N,C has one value per (n, c): rows of C, like channels-last.
  const bool rows = dim == 2 || p.memory_format == at::MemoryFormat::ChannelsLast;
  p.shape.layout = rows ? Layout::nhwc : Layout::nchw;
  p.stats_type = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  p.param_type = input.scalar_type();
  bool first = true;
  for (const auto& [name, t] : params) {
    check_channel_param(op, name, *t, input, p.shape.channels);
    if (!given(*t)) continue;
    if (first) p.param_type = (*t)->scalar_type();
    first = false;
    TORCH_CHECK((*t)->scalar_type() == p.param_type, op,
                ": expected weight, bias and running statistics to share one dtype, but ", name, " is ",
                dtype_name((*t)->scalar_type()), " and another is ", dtype_name(p.param_type));
  }
  return p;
}

inline BatchNormProblem batch_norm_problem(const char* op, const at::Tensor& input,
                                           const std::optional<at::Tensor>& weight,
                                           const std::optional<at::Tensor>& bias,
                                           const std::optional<at::Tensor>& running_mean,
                                           const std::optional<at::Tensor>& running_var, bool training,
                                           bool reduced_precision) {
  const auto p = batch_norm_input(op, input, {{"weight", &weight}, {"bias", &bias},
                                              {"running_mean", &running_mean}, {"running_var", &running_var}},
                                  reduced_precision);
  TORCH_CHECK(given(running_mean) == given(running_var), op,
              ": expected running_mean and running_var both given or both None");
  TORCH_CHECK(training || given(running_mean), op,
              ": expected running_mean and running_var when training=False (eval normalizes with them)");
  for (const auto* t : {&running_mean, &running_var}) {
    TORCH_CHECK(!given(*t) || (*t)->is_contiguous(), op, ": expected running statistics to be contiguous",
                " (they are updated in place)");
  }
  TORCH_CHECK_VALUE(!training || p.shape.count() != 1, "Expected more than 1 value per channel when training, ",
                    "got input size ", input.sizes());
  return p;
}

// save_mean and save_invstd as returned by the forward op.
inline void check_saved_stats(const char* op, const BatchNormProblem& p, const at::Tensor& save_mean,
                              const at::Tensor& save_invstd, const at::Tensor& input) {
  for (const auto& [name, t] : {std::pair{"save_mean", &save_mean}, std::pair{"save_invstd", &save_invstd}}) {
    TORCH_CHECK(t->defined() && t->dim() == 1 && t->numel() == p.shape.channels, op, ": expected ", name,
                " to hold ", p.shape.channels, " values");
    check_same_device(op, name, *t, "input", input);
    TORCH_CHECK(t->scalar_type() == p.stats_type, op, ": expected ", name, " to be ",
                dtype_name(p.stats_type), ", but got ", dtype_name(t->scalar_type()));
  }
}

}  // namespace fastdl
