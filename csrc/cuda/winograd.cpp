// The CUDA backend of the Winograd convolution ops (common/winograd_ops.h does the checks and
// allocation): a workspace, then the launches of winograd_kernels.cu. float16 and bfloat16 are
// accepted, with float arithmetic and workspaces inside the kernels.
//
// The same backend with the kernels' host emulation (winograd_kernels.h) is registered on CPU tensors
// as torch.ops.fastdl_cuda_emulation.conv2d_winograd and .conv2d_winograd_backward (small chunks of
// tiles), and *_int64 (64-bit indices, the device's chunk plan); schemas inferred, no defaults. They
// let tests check the CUDA kernels' indexing on machines without a GPU; not part of fastdl's API.

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "common/overrides.h"
#include "common/winograd_ops.h"
#include "cuda/host_utils.h"
#include "cuda/winograd_kernels.h"

namespace fastdl {
namespace {

template <cuda::Execution kExecution>
struct CudaWinograd {
  static constexpr bool kDevice = kExecution == cuda::Execution::device;
  static constexpr bool kReducedPrecision = kDevice;
  static constexpr bool kFiveByFive = false;  // F(2x2,5x5) is CPU-only

  // The fused kernel (winograd_fused.cu) has not run on a GPU yet: the staged path stays the default
  // until bench/ab_rules.py has measured both (FASTDL_WINOGRAD_FUSED=always forces the fused one).
  static void run(const char* op, cuda::WinogradArgs args, const at::Tensor& like) {
    args.fused = override_or("FASTDL_WINOGRAD_FUSED", false);
    const at::Tensor ws = at::empty({int64_t(cuda::winograd_workspace_bytes(args))}, like.options().dtype(at::kByte));
    args.workspace = ws.data_ptr();
    cuda::check_launch(op, cuda::winograd_conv(args, kDevice ? cuda::current_stream() : nullptr));
  }

  static void winograd_forward(const Conv2dForward& f, int64_t tile) {
    const Conv2dShape& s = f.shape;
    const cuda::WinogradSizes sizes{s.batch, s.in_channels, s.in_h, s.in_w, s.out_channels,
                                    s.out_h, s.out_w,       s.pad_h, s.pad_w};
    run("fastdl.conv2d_winograd",
        {cuda::dtype_of(f.input), s.layout, int(tile), sizes, f.input.const_data_ptr(), f.weight.const_data_ptr(),
         false, f.bias.defined() ? f.bias.const_data_ptr() : nullptr, f.output.data_ptr(), nullptr, kExecution},
        f.input);
  }

  // Measured on an H100 at batch 32 (bench/results/cuda/winograd-weight-grad.md): with 64+ channels on
  // both sides F(4x4,3x3)'s weight gradient took 0.21-0.58x the direct kernel's time on every 3x3
  // layer of VGG-16 and ResNet-50, ResNet's 7x7 maps included (0.37x); with 3 input channels (VGG's
  // first layer) 2.4x. So: 64+ channels, any map.
  static bool winograd_grad_weight(const Conv2dBackward& b, int64_t tile) {
    const Conv2dShape& s = b.shape;
    const bool pays = std::min(s.in_channels, s.out_channels) >= 64;
    if (!winograd_weight_grad_wanted(pays)) return false;
    const cuda::WinogradSizes sizes{s.batch, s.in_channels, s.in_h, s.in_w, s.out_channels,
                                    s.out_h, s.out_w,       s.pad_h, s.pad_w};
    cuda::WinogradWeightGradArgs args{cuda::dtype_of(b.input), s.layout, int(tile), sizes,
                                      b.input.const_data_ptr(), b.grad_output.const_data_ptr(),
                                      b.grad_weight.data_ptr(), nullptr, kExecution};
    const at::Tensor ws = at::empty({int64_t(cuda::winograd_workspace_bytes(args))},
                                    b.input.options().dtype(at::kByte));
    args.workspace = ws.data_ptr();
    cuda::check_launch("fastdl.conv2d_winograd_backward",
                       cuda::winograd_weight_grad(args, kDevice ? cuda::current_stream() : nullptr));
    return true;
  }

  // The input gradient as a Winograd convolution of grad_output (K channels, OH x OW) into grad_input
  // (C channels, H x W), padded by 2 - padding, with the rotated, transposed filters.
  static void winograd_grad_input(const Conv2dBackward& b, int64_t tile) {
    const Conv2dShape& s = b.shape;
    const cuda::WinogradSizes sizes{s.batch, s.out_channels, s.out_h, s.out_w, s.in_channels,
                                    s.in_h,  s.in_w,         2 - s.pad_h, 2 - s.pad_w};
    run("fastdl.conv2d_winograd_backward",
        {cuda::dtype_of(b.grad_output), s.layout, int(tile), sizes, b.grad_output.const_data_ptr(),
         b.weight.const_data_ptr(), true, nullptr, b.grad_input.data_ptr(), nullptr, kExecution},
        b.grad_output);
  }
};

using Emulated = WinogradOps<CudaWinograd<cuda::Execution::host>>;
using EmulatedInt64 = WinogradOps<CudaWinograd<cuda::Execution::host_int64>>;

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, CUDA, m) { WinogradOps<CudaWinograd<cuda::Execution::device>>::define_kernels(m); }

// The library itself is defined in cuda/conv2d.cpp.
TORCH_LIBRARY_FRAGMENT(fastdl_cuda_emulation, m) {
  m.def("conv2d_winograd", TORCH_FN(Emulated::conv2d_winograd));
  m.def("conv2d_winograd_backward", TORCH_FN(Emulated::conv2d_winograd_backward));
  m.def("conv2d_winograd_int64", TORCH_FN(EmulatedInt64::conv2d_winograd));
  m.def("conv2d_winograd_backward_int64", TORCH_FN(EmulatedInt64::conv2d_winograd_backward));
}

}  // namespace fastdl
