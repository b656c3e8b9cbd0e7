#pragma once
// The fused CUDA Winograd forward (winograd_fused.cu), which winograd_conv runs for args.fused.

#include <cstddef>

#include "cuda/winograd_kernels.h"

namespace fastdl::cuda {

std::size_t winograd_fused_workspace_bytes(const WinogradArgs& args);
cudaError_t winograd_fused_conv(const WinogradArgs& args, cudaStream_t stream);

}  // namespace fastdl::cuda
