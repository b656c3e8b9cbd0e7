#pragma once
// The Winograd convolution ops' entry points, written once for every backend (the pattern of
// conv2d_ops.h): a 3x3 cross-correlation of stride 1, dilation 1, one group, any padding, with
// tile = 2 (F(2x2,3x3)) or 4 (F(4x4,3x3)), and on backends with kFiveByFive a 5x5 one with tile = 2
// (F(2x2,5x5)). A backend is a struct with
//
//   static constexpr bool kReducedPrecision, kFiveByFive;
//   static void winograd_forward(const Conv2dForward&, int64_t tile);
//   static void winograd_grad_input(const Conv2dBackward&, int64_t tile);   // writes grad_input
//   static bool winograd_grad_weight(const Conv2dBackward&, int64_t tile);  // optional
//
// The input gradient is itself a Winograd convolution: grad_output, padded by r - 1 - padding, with the
// filters rotated by 180 degrees and input and output channels swapped. The weight gradient is
// Winograd where the backend has it and finds it faster for the shape (it returns whether it wrote
// grad_weight; common/winograd.h derives the transforms), else direct; the bias gradient is always
// direct (fastdl::conv2d_backward through the dispatcher).

#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <optional>
#include <tuple>
#include <type_traits>

#include "common/conv2d_ops.h"
#include "common/overrides.h"

namespace fastdl {

// Whether a backend's winograd_grad_weight takes the Winograd path, given whether its own rule says the
// path pays for the shape (FASTDL_WINOGRAD_WEIGHT_GRAD=always or never overrides: common/overrides.h).
inline bool winograd_weight_grad_wanted(bool pays) { return override_or("FASTDL_WINOGRAD_WEIGHT_GRAD", pays); }

template <typename Backend, typename = void>
struct HasWinogradWeightGrad : std::false_type {};
template <typename Backend>
struct HasWinogradWeightGrad<Backend, std::void_t<decltype(&Backend::winograd_grad_weight)>> : std::true_type {};

template <typename Backend>
struct WinogradOps {
  static constexpr bool kWinogradWeightGrad = HasWinogradWeightGrad<Backend>::value;

  static Conv2dProblem problem(const char* op, const at::Tensor& input, const at::Tensor& weight,
                               at::IntArrayRef padding, int64_t tile) {
    TORCH_CHECK(tile == 2 || tile == 4, op, ": expected tile to be 2 (F(2x2,3x3)) or 4 (F(4x4,3x3)), but got ",
                tile);
    const std::array<int64_t, 2> ones{1, 1};
    Conv2dProblem p = conv2d_problem(op, input, weight, ones, padding, ones, 1, Backend::kReducedPrecision);
    const bool five = Backend::kFiveByFive && p.shape.kernel_h == 5 && p.shape.kernel_w == 5;
    TORCH_CHECK((p.shape.kernel_h == 3 && p.shape.kernel_w == 3) || (five && tile == 2), op,
                ": expected a 3x3 weight (out_channels, in_channels, 3, 3)",
                Backend::kFiveByFive ? ", or a 5x5 one with tile 2," : " (5x5 is CPU-only),", " but got shape ",
                weight.sizes(), " with tile ", tile);
    return p;
  }

  static at::Tensor conv2d_winograd(const at::Tensor& input, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, at::IntArrayRef padding, int64_t tile) {
    constexpr const char* op = "fastdl.conv2d_winograd";
    const Conv2dProblem p = problem(op, input, weight, padding, tile);
    check_bias(op, bias, input, p.shape.out_channels);
    const c10::DeviceGuard guard(input.device());
    at::Tensor output = new_output(p.output_sizes(), input.options(), p.memory_format);
    if (p.shape.batch == 0) return output;
    Conv2dForward f{p.dense(input), weight.contiguous(),
                    dense_or_none(bias),
                    p.batched ? output : output.unsqueeze(0), p.shape};
    Backend::winograd_forward(f, tile);
    return output;
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_winograd_backward(
      const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef padding,
      int64_t tile, std::array<bool, 3> mask) {
    constexpr const char* op = "fastdl.conv2d_winograd_backward";
    const Conv2dProblem p = problem(op, input, weight, padding, tile);
    check_grad_output(op, grad_output, input, p.output_sizes());
    const c10::DeviceGuard guard(input.device());
    at::Tensor grad_input, grad_weight, grad_bias;
    bool direct_weight = mask[1];
    if constexpr (kWinogradWeightGrad) {
      if (mask[1] && p.shape.batch > 0) {
        grad_weight = new_output(weight.sizes(), weight.options());
        direct_weight = !Backend::winograd_grad_weight({p.dense(grad_output), p.dense(input), weight.contiguous(),
                                                        at::Tensor(), grad_weight, at::Tensor(), p.shape},
                                                       tile);
      }
    }
    if (direct_weight || mask[2]) {
      static const auto direct = c10::Dispatcher::singleton()
                                     .findSchemaOrThrow("fastdl::conv2d_backward", "")
                                     .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                         const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef, int64_t, std::array<bool, 3>)>();
      const std::array<int64_t, 2> ones{1, 1};
      auto [unused, direct_grad_weight, direct_grad_bias] =
          direct.call(grad_output, input, weight, ones, padding, ones, 1, {false, direct_weight, mask[2]});
      if (direct_weight) grad_weight = direct_grad_weight;
      grad_bias = direct_grad_bias;
    }
    if (mask[0]) {
      grad_input = new_output(p.input_sizes(), input.options(), p.memory_format);
      if (p.shape.batch > 0) {
        Conv2dBackward b{p.dense(grad_output), p.dense(input), weight.contiguous(),
                         p.batched ? grad_input : grad_input.unsqueeze(0), at::Tensor(), at::Tensor(), p.shape};
        Backend::winograd_grad_input(b, tile);
      }
    }
    return {or_empty(true, grad_input, input), or_empty(true, grad_weight, input), or_empty(true, grad_bias, input)};
  }

  static void define_kernels(torch::Library& m) {
    m.impl("conv2d_winograd", &conv2d_winograd);
    m.impl("conv2d_winograd_backward", &conv2d_winograd_backward);
  }
};

}  // namespace fastdl
