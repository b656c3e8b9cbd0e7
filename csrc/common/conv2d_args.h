#pragma once
// Checking a 2-D convolution call and describing it for the kernels, shared by the CPU and CUDA entry
// points (conv2d_ops.h), with torch.nn.functional.conv2d's rules (aten/native/Convolution.cpp).

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <array>
#include <optional>
#include <vector>

#include "common/checks.h"
#include "common/conv2d_shape.h"

namespace fastdl {

struct Conv2dProblem {
  Conv2dShape shape;
  bool batched;                    // N,C,H,W input; else C,H,W (one image)
  at::MemoryFormat memory_format;  // of x, y and their gradients as the kernels see them

  std::vector<int64_t> input_sizes() const { return sizes(shape.in_channels, shape.in_h, shape.in_w); }
  std::vector<int64_t> output_sizes() const { return sizes(shape.out_channels, shape.out_h, shape.out_w); }
  // An activation of this problem as the kernels need it: N,C,H,W (a view of a C,H,W one), dense in
  // memory_format.
  at::Tensor dense(const at::Tensor& t) const {
    return (batched ? t : t.unsqueeze(0)).contiguous(memory_format);
  }

 private:
  std::vector<int64_t> sizes(int64_t c, int64_t h, int64_t w) const {
    if (batched) return {shape.batch, c, h, w};
    return {c, h, w};
  }
};

// Checks input, weight and the window arguments; `bias` is checked by the forward alone.
inline Conv2dProblem conv2d_problem(const char* op, const at::Tensor& input, const at::Tensor& weight,
                                    at::IntArrayRef stride_arg, at::IntArrayRef padding_arg,
                                    at::IntArrayRef dilation_arg, int64_t groups, bool reduced_precision) {
  using Arr = at::IntArrayRef;
  TORCH_CHECK(input.defined(), op, ": expected input to be a tensor, but got None");
  TORCH_CHECK(weight.defined(), op, ": expected weight to be a tensor, but got None");
  const int64_t dim = input.dim();
  TORCH_CHECK(dim == 3 || dim == 4, op, ": expected input to be 3-D (C,H,W) or 4-D (N,C,H,W), but got shape ",
              input.sizes());
  TORCH_CHECK(weight.dim() == 4, op, ": expected weight to be 4-D (out_channels, in_channels/groups, kH, kW), ",
              "but got shape ", weight.sizes());
  check_floating(op, "input", input, reduced_precision);
  check_same_device(op, "weight", weight, "input", input);
  check_same_dtype(op, "weight", weight, "input", input);
  const auto stride = pair_arg(op, "stride", stride_arg);
  const auto padding = pair_arg(op, "padding", padding_arg);
  const auto dilation = pair_arg(op, "dilation", dilation_arg);
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, op, ": expected stride to be positive, but got ", Arr(stride));
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, op, ": expected dilation to be positive, but got ",
              Arr(dilation));
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, op, ": expected padding to be non-negative, but got ",
              Arr(padding));
  TORCH_CHECK(groups > 0, op, ": expected groups to be positive, but got ", groups);

  Conv2dProblem p{};
  p.batched = dim == 4;
  Conv2dShape& s = p.shape;
  s.batch = p.batched ? input.size(0) : 1;
  s.in_channels = input.size(-3);
  s.in_h = input.size(-2);
  s.in_w = input.size(-1);
  s.out_channels = weight.size(0);
  s.kernel_h = weight.size(2);
  s.kernel_w = weight.size(3);
  TORCH_CHECK(s.out_channels > 0 && s.kernel_h > 0 && s.kernel_w > 0 && weight.size(1) > 0, op,
              ": expected weight with no zero dimension, but got shape ", weight.sizes());
  TORCH_CHECK(s.out_channels % groups == 0, op, ": expected out_channels (weight.size(0) = ", s.out_channels,
              ") to be divisible by groups = ", groups);
  TORCH_CHECK(s.in_channels == weight.size(1) * groups, op, ": given groups = ", groups, " and weight of shape ",
              weight.sizes(), ", expected input of shape ", input.sizes(), " to have ", weight.size(1) * groups,
              " channels, but got ", s.in_channels);
  s.stride_h = stride[0];
  s.stride_w = stride[1];
  s.pad_h = padding[0];
  s.pad_w = padding[1];
  s.dilation_h = dilation[0];
  s.dilation_w = dilation[1];
  s.groups = groups;
  const int64_t extent_h = dilation[0] * (s.kernel_h - 1) + 1, extent_w = dilation[1] * (s.kernel_w - 1) + 1;
  TORCH_CHECK(s.in_h > 0 && s.in_w > 0 && s.in_h + 2 * s.pad_h >= extent_h && s.in_w + 2 * s.pad_w >= extent_w, op,
              ": the padded input (", s.in_h + 2 * s.pad_h, " x ", s.in_w + 2 * s.pad_w,
              ") is smaller than the dilated kernel (", extent_h, " x ", extent_w, ")");
  s.out_h = conv_out_size(s.in_h, s.kernel_h, s.stride_h, s.pad_h, s.dilation_h);
  s.out_w = conv_out_size(s.in_w, s.kernel_w, s.stride_w, s.pad_w, s.dilation_w);
  // As torch: the output is channels-last when either the input or the weight is, except float64 on
  // CUDA, which torch's cuDNN path keeps in N,C,H,W whatever the inputs' layout.
  const bool cuda_double = input.is_cuda() && input.scalar_type() == at::kDouble;
  const bool channels_last = p.batched && !cuda_double &&
                             (input.suggest_memory_format() == at::MemoryFormat::ChannelsLast ||
                              weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast);
  p.memory_format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  s.layout = channels_last ? Layout::nhwc : Layout::nchw;
  return p;
}

// A backward op's grad_output: a tensor of the forward output's sizes, on the input's device and dtype.
inline void check_grad_output(const char* op, const at::Tensor& grad_output, const at::Tensor& input,
                              at::IntArrayRef output_sizes) {
  TORCH_CHECK(grad_output.defined(), op, ": expected grad_output to be a tensor, but got None");
  check_same_device(op, "grad_output", grad_output, "input", input);
  check_same_dtype(op, "grad_output", grad_output, "input", input);
  check_sizes(op, "grad_output", grad_output, output_sizes);
}

inline void check_bias(const char* op, const std::optional<at::Tensor>& bias, const at::Tensor& input,
                       int64_t out_channels) {
  if (!given(bias)) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_channels, op, ": expected bias to be 1-D with ",
              out_channels, " elements (one per output channel), but got shape ", bias->sizes());
  check_same_device(op, "bias", *bias, "input", input);
  check_same_dtype(op, "bias", *bias, "input", input);
}

}  // namespace fastdl
