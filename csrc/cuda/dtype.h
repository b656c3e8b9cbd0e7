#pragma once
// Element types the CUDA launchers accept, and where a launch runs. Launchers take raw pointers and
// these tags, so the device code needs no torch headers; cuda/host_utils.h maps a tensor's dtype to it.

namespace fastdl::cuda {

enum class DType { f32, f64, f16, bf16 };

// Where a call runs: on the device, or in a kernel family's host emulation (the same kernel logic on
// host memory, float and double only, for tests on machines without a GPU; `stream` is then ignored).
// host_int64 uses 64-bit indices where the sizes would allow 32-bit ones; host_mma runs float data
// through the convolution's float16/bfloat16 tensor-core tile (conv2d_kernels.h).
enum class Execution { device, host, host_int64, host_mma };

}  // namespace fastdl::cuda
