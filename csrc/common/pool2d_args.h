#pragma once
// Checking a 2-D pooling call and describing it for the kernels, shared by the CPU and CUDA entry
// points so both accept exactly the same calls and reject the rest with the same messages. The rules
// are torch.nn.functional's (aten/native/Pool.h, AdaptiveAveragePooling.cpp).

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <vector>

#include "common/checks.h"
#include "common/pool2d_windows.h"

namespace fastdl {

// What every pooling op knows once its input is checked.
struct Pool2dProblem {
  Pool2dShape shape;
  bool batched;                    // N,C,H,W input; else C,H,W (one image)
  at::MemoryFormat memory_format;  // layout the kernels read and write: Contiguous or ChannelsLast

  Layout layout() const {
    return memory_format == at::MemoryFormat::ChannelsLast ? Layout::nhwc : Layout::nchw;
  }
  std::vector<int64_t> output_sizes() const { return sizes(shape.out_h, shape.out_w); }
  std::vector<int64_t> input_sizes() const { return sizes(shape.in_h, shape.in_w); }
  // A tensor of this problem as the kernels need it: dense in `memory_format` (a no-op if it is).
  at::Tensor dense(const at::Tensor& t) const { return t.contiguous(memory_format); }

 private:
  std::vector<int64_t> sizes(int64_t h, int64_t w) const {
    if (batched) return {shape.batch, shape.channels, h, w};
    return {shape.channels, h, w};
  }
};

struct MaxPool2dProblem : Pool2dProblem {
  MaxAxis h, w;
};

struct AvgPool2dProblem : Pool2dProblem {
  AvgWindows<AvgAxis> windows;
};

struct AdaptiveAvgPool2dProblem : Pool2dProblem {
  AvgWindows<AdaptiveAxis> windows;
};

// Rank, sizes and dtype of a pooling input; output sizes are filled in by the op's own checks.
inline Pool2dProblem pool2d_input(const char* op, const at::Tensor& input, bool reduced_precision) {
  TORCH_CHECK(input.defined(), op, ": expected input to be a tensor, but got None");
  const int64_t dim = input.dim();
  TORCH_CHECK((dim == 3 || dim == 4) && input.size(-1) > 0 && input.size(-2) > 0 &&
                  input.size(-3) > 0,
              op, ": expected input to be 3-D (C,H,W) or 4-D (N,C,H,W) with non-zero C, H and W",
              " (N may be 0), but got shape ", input.sizes());
  check_floating(op, "input", input, reduced_precision);
  Pool2dProblem p{};
  p.batched = dim == 4;
  p.shape.batch = p.batched ? input.size(0) : 1;
  p.shape.channels = input.size(-3);
  p.shape.in_h = input.size(-2);
  p.shape.in_w = input.size(-1);
  p.memory_format = p.batched ? input.suggest_memory_format() : at::MemoryFormat::Contiguous;
  return p;
}

inline void check_window(const char* op, const std::array<int64_t, 2>& kernel,
                         const std::array<int64_t, 2>& stride,
                         const std::array<int64_t, 2>& padding,
                         const std::array<int64_t, 2>& dilation) {
  using Arr = at::IntArrayRef;
  TORCH_CHECK(kernel[0] > 0 && kernel[1] > 0, op,
              ": expected kernel_size to be positive, but got ", Arr(kernel));
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, op,
              ": expected stride to be positive, but got ", Arr(stride));
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, op,
              ": expected dilation to be positive, but got ", Arr(dilation));
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, op,
              ": expected padding to be non-negative, but got ", Arr(padding));
  // torch.nn.functional's rule, for max pooling too: padding at most half the (undilated) kernel.
  TORCH_CHECK(padding[0] <= kernel[0] / 2 && padding[1] <= kernel[1] / 2, op,
              ": expected padding to be at most half of kernel_size, but got padding=",
              Arr(padding), " with kernel_size=", Arr(kernel));
}

inline void check_output_size(const char* op, const Pool2dProblem& p) {
  TORCH_CHECK(p.shape.out_h >= 1 && p.shape.out_w >= 1, op, ": input of spatial size (",
              p.shape.in_h, ", ", p.shape.in_w, ") is too small for this window: the output",
              " would be (", p.shape.out_h, ", ", p.shape.out_w, ")");
}

inline MaxPool2dProblem max_pool2d_problem(const char* op, const at::Tensor& input,
                                           at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                           bool ceil_mode, bool reduced_precision) {
  MaxPool2dProblem p{pool2d_input(op, input, reduced_precision)};
  const auto k = pair_arg(op, "kernel_size", kernel_size);
  const auto s = pair_arg(op, "stride", stride, kernel_size);
  const auto pad = pair_arg(op, "padding", padding);
  const auto d = pair_arg(op, "dilation", dilation);
  check_window(op, k, s, pad, d);
  auto& sh = p.shape;
  sh.out_h = pool_output_size(sh.in_h, k[0], pad[0], s[0], d[0], ceil_mode);
  sh.out_w = pool_output_size(sh.in_w, k[1], pad[1], s[1], d[1], ceil_mode);
  check_output_size(op, p);
  p.h = MaxAxis{sh.in_h, sh.out_h, k[0], s[0], pad[0], d[0]};
  p.w = MaxAxis{sh.in_w, sh.out_w, k[1], s[1], pad[1], d[1]};
  return p;
}

inline AvgPool2dProblem avg_pool2d_problem(const char* op, const at::Tensor& input,
                                           at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, bool ceil_mode,
                                           bool count_include_pad,
                                           std::optional<int64_t> divisor_override,
                                           bool reduced_precision) {
  AvgPool2dProblem p{pool2d_input(op, input, reduced_precision)};
  const auto k = pair_arg(op, "kernel_size", kernel_size);
  const auto s = pair_arg(op, "stride", stride, kernel_size);
  const auto pad = pair_arg(op, "padding", padding);
  check_window(op, k, s, pad, {1, 1});
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0, op,
              ": expected divisor_override to be non-zero");
  auto& sh = p.shape;
  sh.out_h = pool_output_size(sh.in_h, k[0], pad[0], s[0], 1, ceil_mode);
  sh.out_w = pool_output_size(sh.in_w, k[1], pad[1], s[1], 1, ceil_mode);
  check_output_size(op, p);
  p.windows.h = AvgAxis{sh.in_h, sh.out_h, k[0], s[0], pad[0], count_include_pad};
  p.windows.w = AvgAxis{sh.in_w, sh.out_w, k[1], s[1], pad[1], count_include_pad};
  p.windows.divisor_override = divisor_override.value_or(0);
  return p;
}

inline AdaptiveAvgPool2dProblem adaptive_avg_pool2d_problem(const char* op,
                                                            const at::Tensor& input,
                                                            at::IntArrayRef output_size,
                                                            bool reduced_precision) {
  AdaptiveAvgPool2dProblem p{pool2d_input(op, input, reduced_precision)};
  TORCH_CHECK(output_size.size() == 2, op,
              ": expected output_size to be a pair of ints, but got ", output_size);
  TORCH_CHECK(output_size[0] >= 0 && output_size[1] >= 0, op,
              ": expected output_size to be non-negative, but got ", output_size);
  auto& sh = p.shape;
  sh.out_h = output_size[0];
  sh.out_w = output_size[1];
  p.windows.h = AdaptiveAxis{sh.in_h, sh.out_h};
  p.windows.w = AdaptiveAxis{sh.in_w, sh.out_w};
  p.windows.divisor_override = 0;
  return p;
}

// The output size an adaptive pooling backward is for: grad_output's last two sizes (the full shape
// is checked against the input by check_grad_output).
inline std::array<int64_t, 2> adaptive_grad_size(const char* op, const at::Tensor& grad_output) {
  TORCH_CHECK(grad_output.defined() && grad_output.dim() >= 2, op,
              ": expected grad_output to be shaped like the output (..., OH, OW)");
  return {grad_output.size(-2), grad_output.size(-1)};
}

// grad_output must be shaped like the forward output and live with input.
inline void check_grad_output(const char* op, const Pool2dProblem& p, const at::Tensor& grad_output,
                              const at::Tensor& input) {
  TORCH_CHECK(grad_output.defined(), op, ": expected grad_output to be a tensor, but got None");
  check_same_device(op, "grad_output", grad_output, "input", input);
  check_same_dtype(op, "grad_output", grad_output, "input", input);
  check_sizes(op, "grad_output", grad_output, p.output_sizes());
}

inline void check_indices(const char* op, const Pool2dProblem& p, const at::Tensor& indices,
                          const at::Tensor& input) {
  TORCH_CHECK(indices.defined(), op, ": expected indices to be a tensor, but got None");
  check_same_device(op, "indices", indices, "input", input);
  TORCH_CHECK(indices.scalar_type() == at::kLong, op, ": expected indices to be int64, but got ",
              dtype_name(indices.scalar_type()));
  check_sizes(op, "indices", indices, p.output_sizes());
}

}  // namespace fastdl
