#pragma once
// Element types the CUDA launchers accept. Launchers take raw pointers and this tag, so the device
// code needs no torch headers; cuda/host_utils.h maps a tensor's dtype to it.

namespace fastdl::cuda {

enum class DType { f32, f64, f16, bf16 };

}  // namespace fastdl::cuda
