#pragma once
// The geometry of one 2-D convolution, shared by the CPU and CUDA kernels (no torch headers).
//
// Cross-correlation, as torch.nn.functional.conv2d: with Cg = C / groups input and Kg = K / groups
// output channels per group, output channel k of group g = k / Kg is
//
//   y[n][k][oh][ow] = bias[k] + sum_{c < Cg, r < R, s < S}
//                     w[k][c][r][s] * x[n][g*Cg + c][oh*sh - ph + r*dh][ow*sw - pw + s*dw]
//
// with x zero outside the image. Shapes: x (N, C, H, W), w (K, Cg, R, S), y (N, K, OH, OW).

#include "common/host_device.h"

namespace fastdl {

struct Conv2dShape {
  int64_t batch, in_channels, in_h, in_w;        // N, C, H, W
  int64_t out_channels, kernel_h, kernel_w;      // K, R, S
  int64_t out_h, out_w;                          // OH, OW
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t groups;
  Layout layout;  // of x, y, grad_output and grad_input (w and grad_weight are always K,Cg,R,S)

  FASTDL_HOST_DEVICE int64_t in_per_group() const { return in_channels / groups; }     // Cg
  FASTDL_HOST_DEVICE int64_t out_per_group() const { return out_channels / groups; }   // Kg
  FASTDL_HOST_DEVICE int64_t taps() const { return kernel_h * kernel_w; }              // R*S
  FASTDL_HOST_DEVICE int64_t input_numel() const { return batch * in_channels * in_h * in_w; }
  FASTDL_HOST_DEVICE int64_t output_numel() const { return batch * out_channels * out_h * out_w; }
  FASTDL_HOST_DEVICE int64_t weight_numel() const { return out_channels * in_per_group() * taps(); }
  // Multiply-adds of the forward (each backward does as many).
  FASTDL_HOST_DEVICE int64_t macs() const { return output_numel() * in_per_group() * taps(); }
};

// Output length along one axis: (in + 2*pad - dilation*(kernel - 1) - 1) / stride + 1; the caller
// checks that the dilated kernel fits the padded input.
FASTDL_HOST_DEVICE int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad,
                                         int64_t dilation) {
  return (in + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1;
}

}  // namespace fastdl
