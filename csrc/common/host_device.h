#pragma once
// Marks functions that CPU kernels and CUDA kernels share, so both backends compile one definition,
// and the small integer helpers they use. Index arithmetic is templated on the integer type: the CPU
// uses int64_t, CUDA kernels use int32_t whenever the sizes fit (64-bit division is slow on a GPU).

#if defined(__CUDACC__)
#define FASTDL_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTDL_HOST_DEVICE inline
#endif

#include <cstdint>

namespace fastdl {

// Floor division (rounds toward minus infinity), as PyTorch's div_rtn; b > 0.
template <typename I>
FASTDL_HOST_DEVICE I floor_div(I a, I b) {
  const I q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

template <typename I>
FASTDL_HOST_DEVICE I ceil_div(I a, I b) {
  return -floor_div<I>(-a, b);
}

template <typename I>
FASTDL_HOST_DEVICE I min_of(I a, I b) {
  return a < b ? a : b;
}

template <typename I>
FASTDL_HOST_DEVICE I max_of(I a, I b) {
  return a > b ? a : b;
}

// How a 4-D activation tensor is laid out in memory: contiguous N,C,H,W or channels-last N,H,W,C.
enum class Layout { nchw, nhwc };

// A half-open index interval [begin, end); empty when begin >= end.
template <typename I>
struct IndexRange {
  I begin;
  I end;
  FASTDL_HOST_DEVICE I size() const { return end > begin ? end - begin : 0; }
};

using Range = IndexRange<int64_t>;

}  // namespace fastdl
