#pragma once
// Batch normalization's per-channel formulas, shared by the CPU and CUDA kernels (no torch headers).
//
// Statistics are accumulated on values shifted by K, one value of the channel (the first): sums of
// y = x - K. Because K is itself a value, |mean - K| <= sqrt(n) * std, so even the single-pass
// variance (sum(y^2) - sum(y)^2 / n) / n keeps all but about log2(n) bits of its accumulator, and
// the normalization ((x - K) - (mean - K)) * scale + shift subtracts K exactly from values near it.
// That is what makes inputs with a large mean and a small spread (1e4 +- 1e-2) come out right,
// where x * alpha + beta or a float mean would lose most of the digits.

#include <cmath>

#include "common/host_device.h"

namespace fastdl {

// One problem: `channels` channels of batch * spatial values each. nchw: plane (n, c) of `spatial`
// contiguous values at (n*C + c) * spatial (N,C,L and contiguous N,C,H,W); nhwc: rows of C values,
// row n*spatial + s (N,C and channels-last N,C,H,W).
struct BatchNormShape {
  int64_t batch, channels, spatial;
  Layout layout;
  FASTDL_HOST_DEVICE int64_t count() const { return batch * spatial; }  // values per channel
  FASTDL_HOST_DEVICE int64_t numel() const { return count() * channels; }
};

// Biased variance from the shifted sums s1 = sum(x - K), s2 = sum((x - K)^2) of n values.
template <typename A>
FASTDL_HOST_DEVICE A variance_from_shifted_sums(A s1, A s2, int64_t n) {
  const A var = (s2 - s1 * s1 / A(n)) / A(n);
  return var > A(0) ? var : A(0);
}

template <typename A>
FASTDL_HOST_DEVICE A inverse_std(A var, A eps) {
  return A(1) / sqrt(var + eps);
}

// PyTorch's running statistics: an exponential average (momentum weighs the batch) of the mean and
// of the unbiased variance.
template <typename A>
FASTDL_HOST_DEVICE A updated_running_mean(A running, A mean, A momentum) {
  return momentum * mean + (A(1) - momentum) * running;
}

template <typename A>
FASTDL_HOST_DEVICE A updated_running_var(A running, A biased_var, int64_t n, A momentum) {
  return momentum * (biased_var * A(n) / A(n - 1)) + (A(1) - momentum) * running;
}

}  // namespace fastdl
