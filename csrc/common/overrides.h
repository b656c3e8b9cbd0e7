#pragma once
// Environment overrides of the kernels' automatic choices between two paths that compute the same
// function (and of how outputs are allocated), for tests (to reach both paths on any shape) and for
// A/B measurements (bench/ab_rules.py, bench/winograd_weight_grad.py). Read on every call, since tests
// change them at run time. No torch headers (the .cu files include this).
//
//   FASTDL_WINOGRAD_WEIGHT_GRAD  always | never   the Winograd weight gradient (CPU and CUDA)
//   FASTDL_WINOGRAD_FUSED        always | never   CUDA Winograd forward and input gradient in one kernel
//                                                 (winograd_fused.cu; shipped off until measured)
//   FASTDL_RNN_SMALL_BATCH       always | never   CUDA LSTM/GRU small-batch kernel (shipped to batch 16, kernel 64)
//   FASTDL_CONV_SPLIT            never            CUDA forward/grad_input split reductions
//   FASTDL_CONV_WEIGHTS_IN_PLACE always | never   CPU convolution tiles reading the weights in place
//   FASTDL_CONV_COLUMNS          always | never   CPU convolution forward and input gradient over im2col
//                                                 columns (kernels larger than 1x1)
//   FASTDL_HUGE_PAGE_OUTPUTS     never            CPU outputs of 16 MB and more (and the LSTM/GRU input
//                                                 projection) advised as transparent huge pages
//                                                 (common/outputs.h)

#include <cstdlib>
#include <cstring>

namespace fastdl {

// The path taken, given whether the automatic rule (`pays`) takes it: "always" and "never" override.
inline bool override_or(const char* variable, bool pays) {
  const char* mode = std::getenv(variable);
  if (mode != nullptr && std::strcmp(mode, "always") == 0) return true;
  if (mode != nullptr && std::strcmp(mode, "never") == 0) return false;
  return pays;
}

}  // namespace fastdl
