#pragma once
// Launcher of the CUDA Winograd convolution F(m x m, 3x3), m = 2 or 4 (winograd_kernels.cu), on raw
// pointers. The host side (winograd.cpp) checks arguments, sets the device, allocates the output and
// the workspace, and skips empty batches; everything here is asynchronous on `stream`.
//
// One call computes a "Winograd convolution" (the same function as csrc/cpu/winograd.cpp):
//
//   y[n][k][oh][ow] = bias[k] + sum_{c, r, s < 3} filter[k][c][r][s] * x[n][c][oh - pad_h + r][ow - pad_w + s]
//
// x zero outside the image (the padding may be negative). x: (batch, channels, in_h, in_w) and
// y: (batch, outs, out_h, out_w), both dense in `layout`. The filter is `weight` (outs, channels, 3, 3)
// for the forward; for the input gradient it is the transposed, rotated weight, read in place from
// weight (channels, outs, 3, 3): filter[k][c][r][s] = weight[c][k][2 - r][2 - s].

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "common/host_device.h"
#include "cuda/dtype.h"

namespace fastdl::cuda {

struct WinogradSizes {
  int64_t batch, channels, in_h, in_w;
  int64_t outs, out_h, out_w;
  int64_t pad_h, pad_w;
};

struct WinogradArgs {
  DType dtype;
  Layout layout;
  int tile;  // m: 2 or 4
  WinogradSizes sizes;
  const void* x;
  const void* weight;
  bool transposed;   // weight is (channels, outs, 3, 3), rotated (the input gradient)
  const void* bias;  // outs values, or null
  void* y;
  void* workspace;  // winograd_workspace_bytes(*this) bytes
  Execution execution = Execution::device;
  // One kernel that keeps the transformed tiles in shared memory and their products in registers
  // (winograd_fused.cu), instead of the staged transforms and GEMM through the workspace.
  bool fused = false;
};

// Scratch memory of a call: the transformed filters and (staged) one chunk of transformed tiles and
// their products. Chunks of tiles bound it whatever the batch. The host emulation (execution host) uses
// small chunks, so that tests cross chunk boundaries; host_int64 uses the device's chunk plan.
std::size_t winograd_workspace_bytes(const WinogradArgs& args);

// Emulated calls (execution host or host_int64) take float and double on host memory only (others
// return cudaErrorNotSupported) and ignore `stream`.
cudaError_t winograd_conv(const WinogradArgs& args, cudaStream_t stream);

// The weight gradient of a forward Winograd convolution (not transposed) with these sizes:
//
//   dw[k][c][r][s] = sum over n, oh, ow of dy[n][k][oh][ow] * x[n][c][oh - pad_h + r][ow - pad_w + s]
//
// x and dy dense in `layout`, dw (outs, channels, 3, 3) contiguous, all of `dtype`; accumulated in float
// (double for float64) in a fixed order (deterministic). The batch must not be empty.
struct WinogradWeightGradArgs {
  DType dtype;
  Layout layout;
  int tile;  // m: 2 or 4
  WinogradSizes sizes;
  const void* x;
  const void* dy;
  void* dw;
  void* workspace;  // winograd_workspace_bytes(*this) bytes
  Execution execution = Execution::device;
};

std::size_t winograd_workspace_bytes(const WinogradWeightGradArgs& args);
cudaError_t winograd_weight_grad(const WinogradWeightGradArgs& args, cudaStream_t stream);

}  // namespace fastdl::cuda
