// CPU kernels of 2-D max, average and adaptive average pooling, forward and backward (float32 and
// float64; AVX2 vectors through at::vec when the build enables them).
//
// N,C,H,W: work is split over output rows (planes * OH) and each row is vectorized across output
// columns: a vector holds V neighbouring outputs and every window tap is one (strided) vector load.
// Taps run in PyTorch's order (kernel rows, then columns), so max pooling's values, indices and NaN
// handling and average pooling's sums come out as torch's do.
// N,H,W,C: work is split over output pixels and vectorized across channels.
// Backward: each input plane is zeroed and the outputs' gradients are added into it in output order
// (PyTorch's order) while it is in cache: at the argmax for max pooling, over the window rows for
// average pooling. N,H,W,C average pooling instead gathers each input pixel's gradient, vectorized
// across channels.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/pool2d_ops.h"

namespace fastdl {
namespace {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// Elements of work per parallel task (at::internal::GRAIN_SIZE).
constexpr int64_t kGrain = 32768;

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kGrain / std::max<int64_t>(1, work_per_item));
}

// The vector kernels track argmax indices in the value type; float is exact up to 2^24.
template <typename T>
bool index_exact_in(int64_t plane_size) {
  return plane_size <= (int64_t{1} << std::numeric_limits<T>::digits);
}

// ---- one row of taps for up to V neighbouring outputs ------------------------------------------

// p[0, n) in the first lanes (zeros after); reads nothing past p[n - 1].
template <typename T>
Vec<T> load_first(const T* p, int64_t n) {
  if (n >= Vec<T>::size()) return Vec<T>::loadu(p);
  return n > 0 ? Vec<T>::loadu(p, n) : Vec<T>(T(0));
}

// Calls visit(k, v) for the taps k = 0..kernel-1 of `count` (<= V) neighbouring outputs along one
// input row, in tap order: lane l < count of v is p[l*stride + k*dilation], p pointing at the first
// output's window start. Reads only those elements. Stride 2 deinterleaves pairs of taps from one
// pair of loads.
template <typename T, typename Visit>
void visit_row_taps(const T* p, int64_t kernel, int64_t stride, int64_t dilation, int64_t count, Visit&& visit) {
  constexpr int64_t V = Vec<T>::size();
  if (stride == 1) {
    for (int64_t k = 0; k < kernel; ++k) visit(k, load_first(p + k * dilation, count));
  } else if (stride == 2 && dilation == 1 && kernel >= 2) {
    const int64_t n = 2 * count;  // a pair of taps k, k+1 covers p[k, k + 2*count)
    int64_t k = 0;
    for (; k + 1 < kernel; k += 2) {
      const auto even_odd = at::vec::deinterleave2(load_first(p + k, n), load_first(p + k + V, n - V));
      visit(k, even_odd.first);
      visit(k + 1, even_odd.second);
    }
    // An odd last tap is the odd half of the pair that starts one column earlier.
    if (k < kernel) {
      visit(k, at::vec::deinterleave2(load_first(p + k - 1, n), load_first(p + k - 1 + V, n - V)).second);
    }
  } else if (stride == 2) {
    const int64_t n = 2 * count - 1;
    for (int64_t k = 0; k < kernel; ++k) {
      const T* q = p + k * dilation;
      visit(k, at::vec::deinterleave2(load_first(q, n), load_first(q + V, n - V)).first);
    }
  } else {
    using I = at::vec::int_same_size_t<T>;
    const Vec<I> offsets = Vec<I>::arange(I(0), I(stride));
    for (int64_t k = 0; k < kernel; ++k) {
      const T* q = p + k * dilation;
      if (count == V) {
        visit(k, at::vec::gather<sizeof(T)>(q, offsets));
      } else {
        T lanes[V] = {};
        for (int64_t l = 0; l < count; ++l) lanes[l] = q[l * stride];
        visit(k, Vec<T>::loadu(lanes));
      }
    }
  }
}

// Output columns whose window lies inside the row [0, in): the ones vector chunks may compute.
inline Range inner_columns(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  return {ceil_div(pad, stride), floor_div(in - 1 - (kernel - 1) * dilation + pad, stride) + 1};
}

// Runs chunk(o, count) over the outputs of `inner` (count <= V neighbours from o) and one(o) over
// the rest of [0, n). Full chunks tile `inner`, the last one overlapping its predecessor rather than
// leaving a remainder (recomputing an output writes the same value); a row with fewer than V inner
// outputs gets one partial chunk.
template <typename One, typename Chunk>
void for_each_output(int64_t n, Range inner, int64_t V, One&& one, Chunk&& chunk) {
  const int64_t end = std::min(inner.end, n);
  int64_t o = 0;
  for (; o < std::min(inner.begin, n); ++o) one(o);
  if (end - o >= V) {
    for (; o + V < end; o += V) chunk(o, V);
    chunk(end - V, V);
    o = end;
  } else if (end > o) {
    chunk(o, end - o);
    o = end;
  }
  for (; o < n; ++o) one(o);
}

template <typename T>
void store_indices(const Vec<T>& v, int64_t* dst, int64_t count) {
  using I = at::vec::int_same_size_t<T>;
  I lanes[Vec<T>::size()];
  at::vec::convert_to_int_of_same_size(v).store(lanes);
  for (int64_t l = 0; l < count; ++l) dst[l] = lanes[l];
}

// Sum of `n` contiguous elements; two accumulators halve the chain of dependent adds.
template <typename T>
T contiguous_sum(const T* p, int64_t n) {
  constexpr int64_t V = Vec<T>::size();
  int64_t i = 0;
  T sum = 0;
  if (n >= 2 * V) {
    Vec<T> a(T(0)), b(T(0));
    for (; i + 2 * V <= n; i += 2 * V) {
      a = a + Vec<T>::loadu(p + i);
      b = b + Vec<T>::loadu(p + i + V);
    }
    if (i + V <= n) {
      a = a + Vec<T>::loadu(p + i);
      i += V;
    }
    sum = at::vec::vec_reduce_all<T>([](Vec<T>& x, Vec<T>& y) { return x + y; }, a + b);
  }
  for (; i < n; ++i) sum += p[i];
  return sum;
}

// p[0, n) += value.
template <typename T>
void add_to_run(T* p, int64_t n, T value) {
  constexpr int64_t V = Vec<T>::size();
  int64_t i = 0;
  for (; i + V <= n; i += V) (Vec<T>::loadu(p + i) + Vec<T>(value)).store(p + i);
  for (; i < n; ++i) p[i] += value;
}

// dst[0, n) += src[0, n).
template <typename T>
void add_rows(T* dst, const T* src, int64_t n) {
  constexpr int64_t V = Vec<T>::size();
  int64_t i = 0;
  for (; i + V <= n; i += V) (Vec<T>::loadu(dst + i) + Vec<T>::loadu(src + i)).store(dst + i);
  for (; i < n; ++i) dst[i] += src[i];
}

// p[0, n) /= divisor.
template <typename T>
void scale_row(T* p, int64_t n, T divisor) {
  constexpr int64_t V = Vec<T>::size();
  int64_t i = 0;
  for (; i + V <= n; i += V) (Vec<T>::loadu(p + i) / Vec<T>(divisor)).store(p + i);
  for (; i < n; ++i) p[i] /= divisor;
}

// ---- max pooling ---------------------------------------------------------------------------------

// PyTorch's rule for one window: taps in row-major order, the first maximum wins, a NaN beats any
// number and the last NaN wins. True where `v` replaces the running best.
template <typename T>
bool takes_max(T v, T best) {
  return v > best || std::isnan(v);
}

template <typename T>
Vec<T> takes_max(const Vec<T>& v, const Vec<T>& best) {
  return (v > best) | v.isnan();
}

// Taps of every output position along one axis that land inside the input, computed once per call.
std::vector<Range> taps_table(const MaxAxis& a) {
  std::vector<Range> t(a.out);
  for (int64_t o = 0; o < a.out; ++o) t[o] = a.taps(o);
  return t;
}

// The in-bounds taps of one max pooling output.
struct MaxWindow {
  int64_t ih0, iw0, dh, dw;  // input position of tap (0, 0); spacing of taps
  Range th, tw;
  int64_t pos(int64_t j, int64_t k, int64_t W) const { return (ih0 + j * dh) * W + iw0 + k * dw; }
};

// One output, scalar. Returns the maximum's flat index h*W + w; elements are channel_stride apart.
template <typename T>
int64_t max_window(const T* plane, int64_t W, const MaxWindow& m, T& best_out, int64_t channel_stride = 1) {
  T best = -std::numeric_limits<T>::infinity();
  int64_t best_idx = m.pos(m.th.begin, m.tw.begin, W);
  for (int64_t j = m.th.begin; j < m.th.end; ++j) {
    for (int64_t k = m.tw.begin; k < m.tw.end; ++k) {
      const int64_t idx = m.pos(j, k, W);
      const T v = plane[idx * channel_stride];
      if (takes_max(v, best)) {
        best = v;
        best_idx = idx;
      }
    }
  }
  best_out = best;
  return best_idx;
}

// `count` (<= V) neighbouring outputs of one row (m describes the first), every column tap inside
// the input.
template <typename T, bool kIndices>
void max_chunk(const T* plane, int64_t W, const MaxWindow& m, int64_t stride_w, int64_t kernel_w,
               int64_t count, T* out, int64_t* idx) {
  const Vec<T> lanes = Vec<T>::arange(T(0), T(stride_w));  // in-row offsets of the lanes' windows
  Vec<T> best(-std::numeric_limits<T>::infinity());
  Vec<T> best_idx = Vec<T>(T(m.pos(m.th.begin, 0, W))) + lanes;
  for (int64_t j = m.th.begin; j < m.th.end; ++j) {
    const int64_t row_start = m.pos(j, 0, W);
    visit_row_taps(plane + row_start, kernel_w, stride_w, m.dw, count, [&](int64_t k, const Vec<T>& v) {
      if constexpr (kIndices) {
        const Vec<T> take = takes_max(v, best);
        best = Vec<T>::blendv(best, v, take);
        best_idx = Vec<T>::blendv(best_idx, Vec<T>(T(row_start + k * m.dw)) + lanes, take);
      } else {
        best = at::vec::maximum(best, v);  // propagates NaN, as the scalar rule does
      }
    });
  }
  best.store(out, count);
  if constexpr (kIndices) store_indices(best_idx, idx, count);
}

template <typename T, bool kIndices>
void max_pool2d_nchw(const T* in, T* out, int64_t* idx, const MaxPool2dProblem& p) {
  const Pool2dShape& s = p.shape;
  const std::vector<Range> col_taps = taps_table(p.w);
  const bool vectorize = !kIndices || index_exact_in<T>(s.in_plane());
  const Range inner = vectorize ? inner_columns(s.in_w, p.w.kernel, p.w.stride, p.w.pad, p.w.dilation)
                                : Range{s.out_w, s.out_w};
  const int64_t rows = s.planes() * s.out_h;
  at::parallel_for(0, rows, grain_for(s.out_w * p.h.kernel * p.w.kernel), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* plane = in + (r / s.out_h) * s.in_plane();
      const int64_t oh = r % s.out_h;
      T* out_row = out + r * s.out_w;
      int64_t* idx_row = kIndices ? idx + r * s.out_w : nullptr;
      MaxWindow m{p.h.start(oh), 0, p.h.dilation, p.w.dilation, p.h.taps(oh), {}};
      for_each_output(
          s.out_w, inner, Vec<T>::size(),
          [&](int64_t ow) {
            m.iw0 = p.w.start(ow);
            m.tw = col_taps[ow];
            const int64_t i = max_window(plane, s.in_w, m, out_row[ow]);
            if constexpr (kIndices) idx_row[ow] = i;
          },
          [&](int64_t ow, int64_t count) {
            m.iw0 = p.w.start(ow);
            max_chunk<T, kIndices>(plane, s.in_w, m, p.w.stride, p.w.kernel, count, out_row + ow,
                                   kIndices ? idx_row + ow : nullptr);
          });
    }
  });
}

template <typename T, bool kIndices>
void max_pool2d_nhwc(const T* in, T* out, int64_t* idx, const MaxPool2dProblem& p) {
  const Pool2dShape& s = p.shape;
  const int64_t C = s.channels;
  constexpr int64_t V = Vec<T>::size();
  const int64_t vec_channels = (!kIndices || index_exact_in<T>(s.in_plane())) ? C - C % V : 0;
  const std::vector<Range> row_taps = taps_table(p.h), col_taps = taps_table(p.w);
  const int64_t pixels = s.batch * s.out_plane();
  at::parallel_for(0, pixels, grain_for(C * p.h.kernel * p.w.kernel), [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t oh = (q / s.out_w) % s.out_h, ow = q % s.out_w;
      const T* image = in + (q / s.out_plane()) * s.in_plane() * C;
      const MaxWindow m{p.h.start(oh), p.w.start(ow), p.h.dilation, p.w.dilation, row_taps[oh], col_taps[ow]};
      for (int64_t c = 0; c < vec_channels; c += V) {
        Vec<T> best(-std::numeric_limits<T>::infinity());
        Vec<T> best_idx = Vec<T>(T(m.pos(m.th.begin, m.tw.begin, s.in_w)));
        for (int64_t j = m.th.begin; j < m.th.end; ++j) {
          for (int64_t k = m.tw.begin; k < m.tw.end; ++k) {
            const int64_t pos = m.pos(j, k, s.in_w);
            const Vec<T> v = Vec<T>::loadu(image + pos * C + c);
            if constexpr (kIndices) {
              const Vec<T> take = takes_max(v, best);
              best = Vec<T>::blendv(best, v, take);
              best_idx = Vec<T>::blendv(best_idx, Vec<T>(T(pos)), take);
            } else {
              best = at::vec::maximum(best, v);
            }
          }
        }
        best.store(out + q * C + c);
        if constexpr (kIndices) store_indices(best_idx, idx + q * C + c, V);
      }
      for (int64_t c = vec_channels; c < C; ++c) {
        const int64_t i = max_window(image + c, s.in_w, m, out[q * C + c], C);
        if constexpr (kIndices) idx[q * C + c] = i;
      }
    }
  });
}

// Which output rows (or columns) have windows with no tap inside the input. Possible only with
// dilation: torch then returns -inf and an index outside the window, and such an output, depending
// on no input, must pass no gradient.
std::vector<uint8_t> empty_windows(const MaxAxis& a, bool& any) {
  std::vector<uint8_t> empty(a.out);
  for (int64_t o = 0; o < a.out; ++o) any |= (empty[o] = a.taps(o).size() == 0);
  return empty;
}

// Zeroes the input gradient of `channels` consecutive channels of one image, then adds each
// output's gradient at its argmax, in output order. Spatial neighbours are `stride` elements apart
// (1 for N,C,H,W with one channel; C for N,H,W,C, where a block of channels shares cache lines).
template <typename T>
void scatter_block(const T* grad_out, const int64_t* idx, T* grad_in, const MaxPool2dProblem& p,
                   int64_t stride, int64_t channels, const std::vector<uint8_t>& empty_rows,
                   const std::vector<uint8_t>& empty_cols, bool any_empty) {
  const Pool2dShape& s = p.shape;
  if (stride == channels) {
    std::fill(grad_in, grad_in + s.in_plane() * stride, T(0));
  } else {
    for (int64_t i = 0; i < s.in_plane(); ++i) std::fill(grad_in + i * stride, grad_in + i * stride + channels, T(0));
  }
  for (int64_t oh = 0; oh < s.out_h; ++oh) {
    if (any_empty && empty_rows[oh]) continue;
    for (int64_t ow = 0; ow < s.out_w; ++ow) {
      if (any_empty && empty_cols[ow]) continue;
      const int64_t o = (oh * s.out_w + ow) * stride;
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t i = idx[o + c];
        // Indices given to the backward op by hand may be anything: never write outside the plane.
        if (i >= 0 && i < s.in_plane()) grad_in[i * stride + c] += grad_out[o + c];
      }
    }
  }
}

template <typename T>
void max_pool2d_backward_nchw(const T* grad_out, const int64_t* idx, T* grad_in, const MaxPool2dProblem& p) {
  const Pool2dShape& s = p.shape;
  bool any_empty = false;
  const auto empty_rows = empty_windows(p.h, any_empty), empty_cols = empty_windows(p.w, any_empty);
  at::parallel_for(0, s.planes(), grain_for(s.in_plane() + s.out_plane()), [&](int64_t p0, int64_t p1) {
    for (int64_t pl = p0; pl < p1; ++pl) {
      scatter_block(grad_out + pl * s.out_plane(), idx + pl * s.out_plane(), grad_in + pl * s.in_plane(),
                    p, 1, 1, empty_rows, empty_cols, any_empty);
    }
  });
}

// Tasks are (image, block of 64 channels): wide images still split across threads, each cache line
// of grad_in is written by one task, and the per-output loop overhead is shared by 64 channels
// (16-channel blocks measured 1.4x slower on 32x64x112x112, 3x3/2).
template <typename T>
void max_pool2d_backward_nhwc(const T* grad_out, const int64_t* idx, T* grad_in, const MaxPool2dProblem& p) {
  const Pool2dShape& s = p.shape;
  const int64_t C = s.channels, block = 64, blocks = ceil_div(C, block);
  bool any_empty = false;
  const auto empty_rows = empty_windows(p.h, any_empty), empty_cols = empty_windows(p.w, any_empty);
  at::parallel_for(0, s.batch * blocks, grain_for(block * (s.in_plane() + s.out_plane())), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / blocks, c0 = (t % blocks) * block;
      scatter_block(grad_out + n * s.out_plane() * C + c0, idx + n * s.out_plane() * C + c0,
                    grad_in + n * s.in_plane() * C + c0, p, C, std::min(block, C - c0), empty_rows, empty_cols,
                    any_empty);
    }
  });
}

// ---- average pooling (fixed and adaptive windows) -------------------------------------------------

// One axis of an averaging window tabulated once per call, so that no inner loop divides (an
// adaptive window costs several integer divisions per output or input position).
struct AxisTable {
  std::vector<Range> window;    // per output position: the input positions it averages
  std::vector<Range> covering;  // per input position: the outputs whose window holds it

  template <typename Axis>
  explicit AxisTable(const Axis& a) : window(a.out), covering(a.in) {
    for (int64_t o = 0; o < a.out; ++o) window[o] = a.window(o);
    for (int64_t i = 0; i < a.in; ++i) covering[i] = a.covering(i);
  }
};

// Everything the average pooling kernels look up: both axes and the divisor of every output (the
// same for every plane).
template <typename T>
struct AvgTables {
  AxisTable h, w;
  std::vector<T> divisor;

  template <typename Axis>
  AvgTables(const Pool2dShape& s, const AvgWindows<Axis>& win) : h(win.h), w(win.w), divisor(s.out_plane()) {
    for (int64_t oh = 0; oh < s.out_h; ++oh) {
      for (int64_t ow = 0; ow < s.out_w; ++ow) divisor[oh * s.out_w + ow] = T(win.divisor(oh, ow));
    }
  }
};

// Sum of one window: element by element in row-major order, or as one contiguous run when the
// window spans whole rows (global average pooling).
template <typename T>
T window_sum(const T* plane, int64_t W, Range rh, Range rw) {
  if (rw.begin == 0 && rw.end == W) return contiguous_sum(plane + rh.begin * W, rh.size() * W);
  T sum = 0;
  for (int64_t ih = rh.begin; ih < rh.end; ++ih) {
    for (int64_t iw = rw.begin; iw < rw.end; ++iw) sum += plane[ih * W + iw];
  }
  return sum;
}

// `count` (<= V) neighbouring outputs of one row of fixed windows, every tap inside the input.
template <typename T>
void avg_chunk(const T* plane, int64_t W, Range rh, const AvgAxis& aw, int64_t ow, int64_t count, T divisor,
               T* out) {
  Vec<T> sum(T(0));
  for (int64_t ih = rh.begin; ih < rh.end; ++ih) {
    visit_row_taps(plane + ih * W + aw.start(ow), aw.kernel, aw.stride, 1, count,
                   [&](int64_t, const Vec<T>& v) { sum = sum + v; });
  }
  (sum / Vec<T>(divisor)).store(out + ow, count);
}

template <typename T, typename Axis>
void avg_pool2d_nchw(const T* in, T* out, const Pool2dShape& s, const AvgWindows<Axis>& win) {
  const AvgTables<T> t(s, win);
  if (s.out_plane() == 1 && t.h.window[0].size() == s.in_h && t.w.window[0].size() == s.in_w) {
    // Global average pooling: every plane is one contiguous window. The general path's per-output
    // bookkeeping costs as much as reading these small planes (ResNet-50: 7x7).
    at::parallel_for(0, s.planes(), grain_for(s.in_plane()), [&](int64_t p0, int64_t p1) {
      for (int64_t pl = p0; pl < p1; ++pl) out[pl] = contiguous_sum(in + pl * s.in_plane(), s.in_plane()) / t.divisor[0];
    });
    return;
  }
  Range inner{s.out_w, s.out_w};
  if constexpr (std::is_same_v<Axis, AvgAxis>) {
    inner = inner_columns(s.in_w, win.w.kernel, win.w.stride, win.w.pad, 1);
  }
  const int64_t rows = s.planes() * s.out_h;
  // An output row reads about in_h / out_h input rows (all of them for global pooling).
  const int64_t row_work = ceil_div(s.in_plane(), s.out_h) + s.out_w;
  at::parallel_for(0, rows, grain_for(row_work), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* plane = in + (r / s.out_h) * s.in_plane();
      const int64_t oh = r % s.out_h;
      const Range rh = t.h.window[oh];
      const T* div = t.divisor.data() + oh * s.out_w;
      T* out_row = out + r * s.out_w;
      for_each_output(
          s.out_w, inner, Vec<T>::size(),
          [&](int64_t ow) { out_row[ow] = window_sum(plane, s.in_w, rh, t.w.window[ow]) / div[ow]; },
          [&](int64_t ow, int64_t count) {
            // Inner outputs of a row of fixed windows share one divisor.
            if constexpr (std::is_same_v<Axis, AvgAxis>) avg_chunk(plane, s.in_w, rh, win.w, ow, count, div[ow], out_row);
          });
    }
  });
}

// Each output pixel accumulates its window's pixels, whole rows of C channels at a time (taps in
// PyTorch's order), so that memory is read sequentially even for large windows (global pooling).
template <typename T, typename Axis>
void avg_pool2d_nhwc(const T* in, T* out, const Pool2dShape& s, const AvgWindows<Axis>& win) {
  const AvgTables<T> t(s, win);
  const int64_t C = s.channels;
  const int64_t pixels = s.batch * s.out_plane();
  at::parallel_for(0, pixels, grain_for(C * 4), [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t o = q % s.out_plane(), oh = o / s.out_w, ow = o % s.out_w;
      const T* image = in + (q / s.out_plane()) * s.in_plane() * C;
      const Range rh = t.h.window[oh], rw = t.w.window[ow];
      T* sum = out + q * C;
      std::fill(sum, sum + C, T(0));
      for (int64_t ih = rh.begin; ih < rh.end; ++ih) {
        for (int64_t iw = rw.begin; iw < rw.end; ++iw) add_rows(sum, image + (ih * s.in_w + iw) * C, C);
      }
      scale_row(sum, C, t.divisor[o]);
    }
  });
}

// Zeroes each input plane, then adds every output's grad / divisor over its window in output order
// (PyTorch's order, so the sums round alike), while the plane is in cache. A window's row is one
// contiguous run, or the window one run when it spans whole rows (global average pooling).
template <typename T, typename Axis>
void avg_pool2d_backward_nchw(const T* grad_out, T* grad_in, const Pool2dShape& s,
                              const AvgWindows<Axis>& win) {
  const AvgTables<T> t(s, win);
  const int64_t in_plane = s.in_plane(), out_plane = s.out_plane();
  at::parallel_for(0, s.planes(), grain_for(in_plane + out_plane), [&](int64_t p0, int64_t p1) {
    for (int64_t pl = p0; pl < p1; ++pl) {
      const T* go = grad_out + pl * out_plane;
      T* gi = grad_in + pl * in_plane;
      std::fill(gi, gi + in_plane, T(0));
      for (int64_t oh = 0; oh < s.out_h; ++oh) {
        const Range rh = t.h.window[oh];
        for (int64_t ow = 0; ow < s.out_w; ++ow) {
          const int64_t o = oh * s.out_w + ow;
          const Range rw = t.w.window[ow];
          const T delta = go[o] / t.divisor[o];
          if (rw.size() == s.in_w) {
            add_to_run(gi + rh.begin * s.in_w, rh.size() * s.in_w, delta);
          } else {
            for (int64_t ih = rh.begin; ih < rh.end; ++ih) add_to_run(gi + ih * s.in_w + rw.begin, rw.size(), delta);
          }
        }
      }
    }
  });
}

template <typename T, typename Axis>
void avg_pool2d_backward_nhwc(const T* grad_out, T* grad_in, const Pool2dShape& s,
                              const AvgWindows<Axis>& win) {
  const AvgTables<T> t(s, win);
  const int64_t C = s.channels;
  constexpr int64_t V = Vec<T>::size();
  const int64_t pixels = s.batch * s.in_plane();
  at::parallel_for(0, pixels, grain_for(C * 4), [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t i = q % s.in_plane();
      const T* image = grad_out + (q / s.in_plane()) * s.out_plane() * C;
      const Range rh = t.h.covering[i / s.in_w], rw = t.w.covering[i % s.in_w];
      T* gi = grad_in + q * C;
      int64_t c = 0;
      for (; c + V <= C; c += V) {
        Vec<T> acc(T(0));
        for (int64_t oh = rh.begin; oh < rh.end; ++oh) {
          for (int64_t ow = rw.begin; ow < rw.end; ++ow) {
            const int64_t o = oh * s.out_w + ow;
            acc = acc + Vec<T>::loadu(image + o * C + c) / Vec<T>(t.divisor[o]);
          }
        }
        acc.store(gi + c);
      }
      for (; c < C; ++c) {
        T acc = 0;
        for (int64_t oh = rh.begin; oh < rh.end; ++oh) {
          for (int64_t ow = rw.begin; ow < rw.end; ++ow) {
            const int64_t o = oh * s.out_w + ow;
            acc += image[o * C + c] / t.divisor[o];
          }
        }
        gi[c] = acc;
      }
    }
  });
}

// ---- the CPU backend of Pool2dOps (common/pool2d_ops.h) ------------------------------------------

template <typename T, bool kIndices>
void max_pool2d_layout(const T* in, T* out, int64_t* idx, const MaxPool2dProblem& p) {
  if (p.layout() == Layout::nhwc) {
    max_pool2d_nhwc<T, kIndices>(in, out, idx, p);
  } else {
    max_pool2d_nchw<T, kIndices>(in, out, idx, p);
  }
}

struct CpuPooling {
  static constexpr bool kReducedPrecision = false;

  static void max_forward(const at::Tensor& input, at::Tensor& out, int64_t* indices, const MaxPool2dProblem& p) {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fastdl.max_pool2d", [&] {
      const scalar_t* src = input.const_data_ptr<scalar_t>();
      scalar_t* dst = out.data_ptr<scalar_t>();
      if (indices != nullptr) {
        max_pool2d_layout<scalar_t, true>(src, dst, indices, p);
      } else {
        max_pool2d_layout<scalar_t, false>(src, dst, nullptr, p);
      }
    });
  }

  static void max_backward(const at::Tensor& grad_out, const at::Tensor& indices, at::Tensor& grad_in,
                           const MaxPool2dProblem& p) {
    AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "fastdl.max_pool2d_backward", [&] {
      const scalar_t* g = grad_out.const_data_ptr<scalar_t>();
      const int64_t* idx = indices.const_data_ptr<int64_t>();
      scalar_t* gi = grad_in.data_ptr<scalar_t>();
      if (p.layout() == Layout::nhwc) {
        max_pool2d_backward_nhwc(g, idx, gi, p);
      } else {
        max_pool2d_backward_nchw(g, idx, gi, p);
      }
    });
  }

  template <typename Axis>
  static void avg_forward(const at::Tensor& input, at::Tensor& out, const Pool2dProblem& p,
                          const AvgWindows<Axis>& win) {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fastdl.avg_pool2d", [&] {
      const scalar_t* src = input.const_data_ptr<scalar_t>();
      scalar_t* dst = out.data_ptr<scalar_t>();
      if (p.layout() == Layout::nhwc) {
        avg_pool2d_nhwc(src, dst, p.shape, win);
      } else {
        avg_pool2d_nchw(src, dst, p.shape, win);
      }
    });
  }

  template <typename Axis>
  static void avg_backward(const at::Tensor& grad_out, at::Tensor& grad_in, const Pool2dProblem& p,
                           const AvgWindows<Axis>& win) {
    AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "fastdl.avg_pool2d_backward", [&] {
      const scalar_t* g = grad_out.const_data_ptr<scalar_t>();
      scalar_t* gi = grad_in.data_ptr<scalar_t>();
      if (p.layout() == Layout::nhwc) {
        avg_pool2d_backward_nhwc(g, gi, p.shape, win);
      } else {
        avg_pool2d_backward_nchw(g, gi, p.shape, win);
      }
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, CPU, m) { Pool2dOps<CpuPooling>::define_kernels(m); }

}  // namespace fastdl
