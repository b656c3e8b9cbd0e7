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
#include "cpu/scratch.h"

namespace fastdl {

// An N,C,H,W tensor of any layout: element (n, c, h, w) at data[n*sn + c*sc + h*sh + w*sw].
template <typename T>
struct Strided4d {
  T* data;
  int64_t sn, sc, sh, sw;
  T* at(int64_t n, int64_t c, int64_t h, int64_t w) const { return data + n * sn + c * sc + h * sh + w * sw; }
  // Whether each plane (of rows `width` long) is one contiguous run.
  bool planes_dense(int64_t width) const { return sw == 1 && sh == width; }
};

template <typename T>
Strided4d<T> strided(const at::Tensor& t) {
  return {static_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

inline int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Part p of [0, n) split into `parts` near-equal ranges.
inline Range part_of(int64_t n, int64_t parts, int64_t p) { return {n * p / parts, n * (p + 1) / parts}; }

// How many ranges to split `blocks` output-channel blocks into so that `items` x that gives every
// thread at least `per_thread` items (several per thread balance uneven items).
inline int64_t block_chunks(int64_t items, int64_t blocks, int64_t per_thread = 4) {
  const int64_t wanted = div_up(per_thread * at::get_num_threads(), std::max<int64_t>(items, 1));
  return std::clamp<int64_t>(wanted, 1, blocks);
}

// Runs body(begin, end) on one contiguous range of [0, count) per thread, the ranges' total costs
// near-equal: item i goes to the thread whose share of the total holds the middle of its cost.
// at::parallel_for's equal counts leave threads idle when items differ (a map's last rows, a last
// tile of one pixel): at batch 1, 10 rows against 4 cost a third of the time.
template <typename Cost, typename Body>
void parallel_by_cost(int64_t count, Cost&& cost, Body&& body) {
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), count);
  if (threads <= 1) {
    if (count > 0) body(int64_t(0), count);
    return;
  }
  std::vector<double> middle(count);
  double total = 0;
  for (int64_t i = 0; i < count; ++i) {
    const double c = double(cost(i));
    middle[i] = total + c / 2;
    total += c;
  }
  std::vector<int64_t> first(threads + 1, count);
  first[0] = 0;
  for (int64_t t = 1, i = 0; t < threads; ++t) {
    while (i < count && middle[i] < total * double(t) / double(threads)) ++i;
    first[t] = i;
  }
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      if (first[t] < first[t + 1]) body(first[t], first[t + 1]);
    }
  });
}

// Channel strides that are a multiple of 4 KiB make the tile's loads alias in the L1 cache.
inline int64_t unaliased(int64_t elements, int64_t elem_size) {
  return (elements * elem_size) % 4096 == 0 ? elements + 64 / elem_size : elements;
}

// A buffer per thread, grown on demand, given back to the scratch cache with the call.
template <typename T>
class ThreadBuffers {
 public:
  ThreadBuffers() : buffers_(at::get_num_threads()) {}
  T* get(int64_t size) { return buffers_[at::get_thread_num()].at_least(size); }

 private:
  std::vector<Scratch<T>> buffers_;
};

}  // namespace fastdl
