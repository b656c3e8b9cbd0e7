#pragma once
// What the CPU kernels share to walk tensors and split work over threads: strided 4-D access,
// near-equal ranges, per-thread scratch buffers.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/host_device.h"

namespace fastdl {

// An N,C,H,W tensor of any layout: element (n, c, h, w) at data[n*sn + c*sc + h*sh + w*sw].
template <typename T>
struct Strided4d {
  T* data;
  int64_t sn, sc, sh, sw;
  T* at(int64_t n, int64_t c, int64_t h, int64_t w) const { return data + n * sn + c * sc + h * sh + w * sw; }
};

template <typename T>
Strided4d<T> strided(const at::Tensor& t) {
  return {static_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

inline int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Part p of [0, n) split into `parts` near-equal ranges.
inline Range part_of(int64_t n, int64_t parts, int64_t p) { return {n * p / parts, n * (p + 1) / parts}; }

// How many ranges to split `blocks` output-channel blocks into so that `items` x that keeps every
// thread busy (four items per thread balance uneven items).
inline int64_t block_chunks(int64_t items, int64_t blocks) {
  const int64_t wanted = div_up(4 * at::get_num_threads(), std::max<int64_t>(items, 1));
  return std::clamp<int64_t>(wanted, 1, blocks);
}

// Channel strides that are a multiple of 4 KiB make the tile's loads alias in the L1 cache.
inline int64_t unaliased(int64_t elements, int64_t elem_size) {
  return (elements * elem_size) % 4096 == 0 ? elements + 64 / elem_size : elements;
}

// A buffer per thread, grown on demand, freed with the call.
template <typename T>
class ThreadBuffers {
 public:
  ThreadBuffers() : buffers_(at::get_num_threads()) {}
  T* get(int64_t size) {
    Buffer& b = buffers_[at::get_thread_num()];
    if (b.size < size) {
      b.data.reset(new T[size]);
      b.size = size;
    }
    return b.data.get();
  }

 private:
  struct Buffer {
    std::unique_ptr<T[]> data;
    int64_t size = 0;
  };
  std::vector<Buffer> buffers_;
};

}  // namespace fastdl
