// CPU kernels of batch normalization (float32, float64): training and eval, forward and backward.
//
// Statistics (common/batch_norm_math.h): one pass of sums of x - K and (x - K)^2 in double, K the
// channel's first value. Channel planes (N,C,L and N,C,H,W) are split over channels: a thread sums
// a channel's N planes, then normalizes them while they are still in cache, so the input is read
// from memory about once. Rows of C (N,C and channels-last N,C,H,W) are split over rows: each
// thread sums its rows into its own per-channel accumulators, combined in a fixed order afterwards
// (results do not depend on scheduling), then every row is normalized.
// Backward: per channel sum(dy) and sum(dy * (x - mean)) in double, then dx elementwise, organized
// the same two ways.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/batch_norm_ops.h"
#include "cpu/work_split.h"  // part_of

namespace fastdl {
namespace {

template <typename T>
using Vec = at::vec::Vectorized<T>;
using VecD = Vec<double>;
constexpr int64_t kD = VecD::size();

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_item));
}

double reduce(const VecD& v) {
  return at::vec::vec_reduce_all<double>([](VecD& a, VecD& b) { return a + b; }, v);
}

// ---- double accumulation of float or double runs ----------------------------------------------------

// Values per step of the double accumulators: two double vectors of float input, one of double.
template <typename T>
constexpr int64_t kStep = sizeof(T) == 4 ? 2 * kD : kD;

// p[0, kStep<T>) as double vectors (float converts exactly); for double input `hi` is unused.
template <typename T>
std::pair<VecD, VecD> load_double(const T* p) {
  if constexpr (sizeof(T) == 8) {
    return {VecD::loadu(p), VecD(0.0)};
  } else {
#if defined(CPU_CAPABILITY_AVX2)
    const __m256 v = _mm256_loadu_ps(p);
    return {VecD(_mm256_cvtps_pd(_mm256_castps256_ps128(v))), VecD(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)))};
#else
    double buf[2 * kD];
    for (int64_t i = 0; i < 2 * kD; ++i) buf[i] = p[i];
    return {VecD::loadu(buf), VecD::loadu(buf + kD)};
#endif
  }
}

struct ShiftedSums {
  double s1 = 0, s2 = 0;  // sum(x - K), sum((x - K)^2)
};

template <typename T>
void add_shifted(const T* x, int64_t n, double shift, ShiftedSums& out) {
  const VecD k(shift);
  VecD s1(0.0), s2(0.0), t1(0.0), t2(0.0);
  int64_t i = 0;
  for (; i + kStep<T> <= n; i += kStep<T>) {
    auto [lo, hi] = load_double(x + i);
    lo = lo - k;
    s1 = s1 + lo;
    s2 = at::vec::fmadd(lo, lo, s2);
    if constexpr (sizeof(T) == 4) {
      hi = hi - k;
      t1 = t1 + hi;
      t2 = at::vec::fmadd(hi, hi, t2);
    }
  }
  double a = reduce(s1 + t1), b = reduce(s2 + t2);
  for (; i < n; ++i) {
    const double y = double(x[i]) - shift;
    a += y;
    b += y * y;
  }
  out.s1 += a;
  out.s2 += b;
}

struct GradSums {
  double dy = 0, dy_xmu = 0;  // sum(dy), sum(dy * (x - mean))
};

// Gradient sums are accumulated in the input's type within a run and in double across runs, as
// PyTorch does: unlike the forward statistics they need no protection against a large mean (which
// x - mean has already removed), and double accumulation costs twice the instructions.
template <typename T>
void add_grad(const T* dy, const T* x, int64_t n, double mean, GradSums& out) {
  using V = Vec<T>;
  const V m(static_cast<T>(mean));
  V s1(T(0)), s2(T(0)), t1(T(0)), t2(T(0));
  int64_t i = 0;
  for (; i + 2 * V::size() <= n; i += 2 * V::size()) {
    const V d0 = V::loadu(dy + i), d1 = V::loadu(dy + i + V::size());
    s1 = s1 + d0;
    t1 = t1 + d1;
    s2 = at::vec::fmadd(d0, V::loadu(x + i) - m, s2);
    t2 = at::vec::fmadd(d1, V::loadu(x + i + V::size()) - m, t2);
  }
  const auto sum = [](const V& v) { return double(at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, v)); };
  double a = sum(s1 + t1), b = sum(s2 + t2);
  for (; i < n; ++i) {
    a += double(dy[i]);
    b += double(dy[i]) * (double(x[i]) - mean);
  }
  out.dy += a;
  out.dy_xmu += b;
}

// ---- per-channel results ----------------------------------------------------------------------------

// The per-channel tensors of a call, resolved once (absent ones are null).
template <typename T>
struct Channels {
  const T* weight;
  const T* bias;
  T* running_mean;
  T* running_var;
  T* save_mean;
  T* save_invstd;
};

template <typename T>
T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
Channels<T> channels_of(const BatchNormForward& f) {
  return {ptr_or_null<T>(f.weight), ptr_or_null<T>(f.bias), ptr_or_null<T>(f.running_mean),
          ptr_or_null<T>(f.running_var), f.save_mean.data_ptr<T>(), f.save_invstd.data_ptr<T>()};
}

// How one channel is normalized: y = ((x - shift) - centered) * scale + bias, where
// centered = mean - shift is small, so x - shift is exact near the data.
template <typename T>
struct Affine {
  T shift, centered, scale, bias;
};

// Mean and inverse standard deviation of channel c (training: from its sums, updating the running
// statistics; eval: the running statistics), written to save_mean / save_invstd, and the affine
// map that normalizes it.
template <typename T>
Affine<T> channel_affine(const BatchNormForward& f, const Channels<T>& ch, int64_t c, double shift,
                         const ShiftedSums& sums) {
  const int64_t n = f.problem.shape.count();
  double mean, var;
  if (f.training) {
    mean = shift + sums.s1 / double(n);
    var = variance_from_shifted_sums(sums.s1, sums.s2, n);
    if (ch.running_mean != nullptr) {
      ch.running_mean[c] = T(updated_running_mean<double>(ch.running_mean[c], mean, f.momentum));
      ch.running_var[c] = T(updated_running_var<double>(ch.running_var[c], var, n, f.momentum));
    }
  } else {
    mean = ch.running_mean[c];
    var = ch.running_var[c];
    shift = mean;
  }
  const double invstd = inverse_std(var, f.eps);
  ch.save_mean[c] = T(mean);
  ch.save_invstd[c] = T(invstd);
  const double w = ch.weight != nullptr ? double(ch.weight[c]) : 1.0;
  const double b = ch.bias != nullptr ? double(ch.bias[c]) : 0.0;
  return {T(shift), T(mean - shift), T(w * invstd), T(b)};
}

// max(v, 0) when kRelu (batch_norm_relu_inference), else v. NaN stays NaN, as in torch.relu.
template <bool kRelu, typename T>
Vec<T> relu_if(const Vec<T>& v) {
  if constexpr (kRelu) {
    return at::vec::clamp_min(v, Vec<T>(T(0)));
  } else {
    return v;
  }
}

template <bool kRelu, typename T>
std::enable_if_t<std::is_floating_point_v<T>, T> relu_if(T v) {
  if constexpr (kRelu) {
    return v > T(0) || v != v ? v : T(0);
  } else {
    return v;
  }
}

template <bool kRelu, typename T>
void normalize_run(const T* x, T* y, int64_t n, const Affine<T>& a) {
  const Vec<T> shift(a.shift), centered(a.centered), scale(a.scale), bias(a.bias);
  int64_t i = 0;
  for (; i + Vec<T>::size() <= n; i += Vec<T>::size()) {
    relu_if<kRelu>(at::vec::fmadd((Vec<T>::loadu(x + i) - shift) - centered, scale, bias)).store(y + i);
  }
  for (; i < n; ++i) y[i] = relu_if<kRelu>(((x[i] - a.shift) - a.centered) * a.scale + a.bias);
}

// Channel planes at least this long are processed a channel at a time (sums, then the same planes
// again while cached); shorter ones in memory order, where a channel's planes are too scattered.
constexpr int64_t kChannelAtATime = 128;

int64_t parts_for(int64_t units, int64_t work_per_unit) {
  const int64_t useful = std::max<int64_t>(1, units * work_per_unit / 16384);
  return std::min<int64_t>({at::get_num_threads(), useful, std::max<int64_t>(1, units)});
}

// Per-channel totals of `parts` partial sums s1[part * C + c], s2[...], added in part order.
std::vector<std::pair<double, double>> combine_parts(const std::vector<double>& s1, const std::vector<double>& s2,
                                                     int64_t parts, int64_t C) {
  std::vector<std::pair<double, double>> total(C, {0.0, 0.0});
  for (int64_t t = 0; t < parts; ++t) {
    for (int64_t c = 0; c < C; ++c) {
      total[c].first += s1[t * C + c];
      total[c].second += s2[t * C + c];
    }
  }
  return total;
}

// Per-channel sums over units (planes or rows) in memory order: each part of the units accumulates
// into its own per-channel array, and the arrays are added in part order (the result does not
// depend on scheduling). add(unit, sums_of_part) does the accumulating.
template <typename Add>
std::vector<std::pair<double, double>> memory_order_sums(int64_t units, int64_t work_per_unit, int64_t C, Add&& add) {
  const int64_t parts = parts_for(units, work_per_unit);
  std::vector<double> s1(parts * C, 0.0), s2(parts * C, 0.0);
  at::parallel_for(0, parts, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const Range r = part_of(units, parts, t);
      for (int64_t u = r.begin; u < r.end; ++u) add(u, s1.data() + t * C, s2.data() + t * C);
    }
  });
  return combine_parts(s1, s2, parts, C);
}

// ---- rows of C channels, in chunks ------------------------------------------------------------------

// Rows (N,C and channels-last) are processed in chunks of kRows consecutive rows, walked one block of
// kBlock channels at a time with the rows inner: a block's accumulators or parameters stay in
// registers for kRows rows, while chunks still stream through memory in order (a chunk's rows stay
// in cache and its pages in the TLB, which tiles spanning all rows of a block did not: measured 3x
// slower at 1024x4096).
constexpr int64_t kBlock = 4 * kD;  // 16 channels on AVX2: one 64-byte line of float
constexpr int64_t kRows = 16;

// p[0, kBlock) as four double vectors.
template <typename T>
std::array<VecD, 4> load_block(const T* p) {
  if constexpr (sizeof(T) == 4) {
    const auto [a, b] = load_double(p);
    const auto [c, d] = load_double(p + 2 * kD);
    return {a, b, c, d};
  } else {
    return {VecD::loadu(p), VecD::loadu(p + kD), VecD::loadu(p + 2 * kD), VecD::loadu(p + 3 * kD)};
  }
}

// Per-channel double sums over all rows of two quantities of each value (the forward statistics):
// add(row, c, acc1, acc2) adds the values of the kBlock channels from c of one row into double vector
// accumulators, and add_one(row, c) returns the pair for one channel past the last full block.
// Accumulators are added into per-channel arrays once per block of kRows rows; each part of the rows
// has its own arrays, added in part order afterwards (the result does not depend on scheduling).
template <typename AddBlock, typename AddOne>
std::vector<std::pair<double, double>> column_sums(int64_t rows, int64_t C, AddBlock add, AddOne add_one) {
  constexpr int64_t kVecs = kBlock / kD;
  const int64_t parts = parts_for(rows, C);
  const int64_t full = C - C % kBlock;
  std::vector<double> s1(parts * C, 0.0), s2(parts * C, 0.0);
  at::parallel_for(0, parts, 1, [&, add, add_one](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      double* a = s1.data() + t * C;
      double* b = s2.data() + t * C;
      const Range r = part_of(rows, parts, t);
      for (int64_t r0 = r.begin; r0 < r.end; r0 += kRows) {
        const int64_t r1 = std::min(r.end, r0 + kRows);
        for (int64_t c = 0; c < full; c += kBlock) {
          std::array<VecD, kVecs> acc1, acc2;
          acc1.fill(VecD(0.0));
          acc2.fill(VecD(0.0));
          for (int64_t row = r0; row < r1; ++row) add(row, c, acc1, acc2);
          for (int64_t i = 0; i < kVecs; ++i) {
            (VecD::loadu(a + c + i * kD) + acc1[i]).store(a + c + i * kD);
            (VecD::loadu(b + c + i * kD) + acc2[i]).store(b + c + i * kD);
          }
        }
        for (int64_t row = r0; row < r1; ++row) {
          for (int64_t c = full; c < C; ++c) {
            const auto [v1, v2] = add_one(row, c);
            a[c] += v1;
            b[c] += v2;
          }
        }
      }
    }
  });
  return combine_parts(s1, s2, parts, C);
}

// Per-channel sums over all rows, a row at a time: add_row(row, acc1, acc2) adds the row's C values
// into accumulator arrays of type A (the input's type: the gradient sums, see add_grad), which are
// flushed into double per-channel arrays every kRows rows; each part of the rows has its own, added
// in part order afterwards. The gradient sums read two tensors: in column_sums' order (16 rows, a
// block of channels at a time) that is 32 streams at once, and the pass ran at half the rate per byte
// of the passes that read in order (perf of 1024x4096's training step: 21% of the samples for a third
// of the bytes); row by row, 1024x4096 forward+backward 4.6-5.1 -> 3.9-4.3 ms (bench/NOTES.md, Batch
// normalization 6). The forward's statistics stay in column_sums: their accumulators are double,
// whose arrays for a row of 4096 channels (64 KB) no longer fit the L1 cache (1.5 -> 2.0 ms that way).
template <typename A, typename AddRow>
std::vector<std::pair<double, double>> row_sums(int64_t rows, int64_t C, AddRow add_row) {
  const int64_t parts = parts_for(rows, C);
  std::vector<double> s1(parts * C, 0.0), s2(parts * C, 0.0);
  at::parallel_for(0, parts, 1, [&, add_row](int64_t t0, int64_t t1) {
    std::vector<A> acc1(C), acc2(C);
    for (int64_t t = t0; t < t1; ++t) {
      double* a = s1.data() + t * C;
      double* b = s2.data() + t * C;
      const Range r = part_of(rows, parts, t);
      for (int64_t r0 = r.begin; r0 < r.end; r0 += kRows) {
        std::fill(acc1.begin(), acc1.end(), A(0));
        std::fill(acc2.begin(), acc2.end(), A(0));
        for (int64_t row = r0; row < std::min(r.end, r0 + kRows); ++row) add_row(row, acc1.data(), acc2.data());
        for (int64_t c = 0; c < C; ++c) {
          a[c] += double(acc1[c]);
          b[c] += double(acc2[c]);
        }
      }
    }
  });
  return combine_parts(s1, s2, parts, C);
}

// ---- forward -------------------------------------------------------------------------------------

template <typename T>
void forward_channel_at_a_time(const BatchNormForward& f) {
  const BatchNormShape& s = f.problem.shape;
  const Channels<T> ch = channels_of<T>(f);
  const T* x = f.input.const_data_ptr<T>();
  T* y = f.output.data_ptr<T>();
  at::parallel_for(0, s.channels, grain_for(s.count()), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const auto plane = [&](int64_t n) { return (n * s.channels + c) * s.spatial; };
      const double shift = double(x[plane(0)]);
      ShiftedSums sums;
      for (int64_t n = 0; n < s.batch; ++n) add_shifted(x + plane(n), s.spatial, shift, sums);
      const Affine<T> a = channel_affine<T>(f, ch, c, shift, sums);
      for (int64_t n = 0; n < s.batch; ++n) normalize_run<false>(x + plane(n), y + plane(n), s.spatial, a);
    }
  });
}

// The shift of each channel: its first value (plane 0 of the channel, or row 0).
template <typename T>
std::vector<double> channel_shifts(const T* x, const BatchNormShape& s) {
  std::vector<double> k(s.channels);
  for (int64_t c = 0; c < s.channels; ++c) k[c] = double(s.layout == Layout::nchw ? x[c * s.spatial] : x[c]);
  return k;
}

template <typename T>
std::vector<std::pair<double, double>> shifted_sums_in_memory_order(const T* x, const BatchNormShape& s,
                                                                   const std::vector<double>& k) {
  const int64_t C = s.channels;
  if (s.layout == Layout::nchw) {
    return memory_order_sums(s.batch * C, s.spatial, C, [&](int64_t plane, double* s1, double* s2) {
      const int64_t c = plane % C;
      ShiftedSums sums;
      add_shifted(x + plane * s.spatial, s.spatial, k[c], sums);
      s1[c] += sums.s1;
      s2[c] += sums.s2;
    });
  }
  const double* kp = k.data();
  return column_sums(
      s.count(), C,
      [x, C, kp](int64_t row, int64_t c, std::array<VecD, 4>& acc1, std::array<VecD, 4>& acc2) {
        const auto y = load_block(x + row * C + c);
        for (int i = 0; i < 4; ++i) {
          const VecD v = y[i] - VecD::loadu(kp + c + i * kD);
          acc1[i] = acc1[i] + v;
          acc2[i] = at::vec::fmadd(v, v, acc2[i]);
        }
      },
      [x, C, kp](int64_t row, int64_t c) {
        const double v = double(x[row * C + c]) - kp[c];
        return std::pair{v, v * v};
      });
}

template <bool kRelu, typename T>
void normalize_in_memory_order(const T* x, T* y, const BatchNormShape& s, const std::vector<Affine<T>>& affine) {
  const int64_t C = s.channels;
  if (s.layout == Layout::nchw) {
    at::parallel_for(0, s.batch * C, grain_for(s.spatial), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) normalize_run<kRelu>(x + p * s.spatial, y + p * s.spatial, s.spatial, affine[p % C]);
    });
    return;
  }
  // y = (x - shift) * scale + (bias - centered * scale): three per-channel arrays. Both terms are of
  // the order of the output, so folding `centered` into the bias loses nothing.
  std::vector<T> params(3 * C);
  for (int64_t c = 0; c < C; ++c) {
    params[c] = affine[c].shift;
    params[C + c] = affine[c].scale;
    params[2 * C + c] = T(double(affine[c].bias) - double(affine[c].centered) * double(affine[c].scale));
  }
  const T* shift = params.data();
  const T* scale = shift + C;
  const T* offset = scale + C;
  at::parallel_for(0, s.count(), grain_for(C), [=](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      const T* xr = x + row * C;
      T* yr = y + row * C;
      int64_t c = 0;
      for (; c + Vec<T>::size() <= C; c += Vec<T>::size()) {
        relu_if<kRelu>(at::vec::fmadd(Vec<T>::loadu(xr + c) - Vec<T>::loadu(shift + c), Vec<T>::loadu(scale + c),
                                      Vec<T>::loadu(offset + c))).store(yr + c);
      }
      for (; c < C; ++c) yr[c] = relu_if<kRelu>((xr[c] - shift[c]) * scale[c] + offset[c]);
    }
  });
}

template <typename T>
void forward(const BatchNormForward& f) {
  const BatchNormShape& s = f.problem.shape;
  if (f.training && s.layout == Layout::nchw && s.spatial >= kChannelAtATime) return forward_channel_at_a_time<T>(f);
  const Channels<T> ch = channels_of<T>(f);
  const T* x = f.input.const_data_ptr<T>();
  std::vector<Affine<T>> affine(s.channels);
  if (f.training) {
    const std::vector<double> k = channel_shifts(x, s);
    const auto sums = shifted_sums_in_memory_order(x, s, k);
    for (int64_t c = 0; c < s.channels; ++c) affine[c] = channel_affine<T>(f, ch, c, k[c], {sums[c].first, sums[c].second});
  } else {
    for (int64_t c = 0; c < s.channels; ++c) affine[c] = channel_affine<T>(f, ch, c, 0.0, {});
  }
  if (f.relu) {
    normalize_in_memory_order<true>(x, f.output.data_ptr<T>(), s, affine);
  } else {
    normalize_in_memory_order<false>(x, f.output.data_ptr<T>(), s, affine);
  }
}

// ---- backward ------------------------------------------------------------------------------------

// dx = (dy - sum(dy)/n - (x - mean) * sum(dy (x - mean)) * invstd^2 / n) * invstd * w in training;
// dx = dy * invstd * w in eval, where mean and invstd are constants.
template <typename T>
struct GradAffine {
  T mean, dy_mean, k, scale;  // dx = (dy - dy_mean - (x - mean) * k) * scale
};

// The per-channel tensors of a backward call, resolved once (absent ones are null).
template <typename T>
struct GradChannels {
  const T* weight;
  const T* mean;
  const T* invstd;
  T* grad_weight;
  T* grad_bias;
};

template <typename T>
GradChannels<T> channels_of(const BatchNormBackward& b) {
  return {b.weight.defined() ? b.weight.const_data_ptr<T>() : nullptr, b.save_mean.const_data_ptr<T>(),
          b.save_invstd.const_data_ptr<T>(), ptr_or_null<T>(b.grad_weight), ptr_or_null<T>(b.grad_bias)};
}

template <typename T>
GradAffine<T> channel_grads(const BatchNormBackward& b, const GradChannels<T>& ch, int64_t c, const GradSums& sums) {
  const double n = double(b.problem.shape.count());
  const double mean = ch.mean[c], invstd = ch.invstd[c];
  const double w = ch.weight != nullptr ? double(ch.weight[c]) : 1.0;
  if (ch.grad_weight != nullptr) ch.grad_weight[c] = T(sums.dy_xmu * invstd);
  if (ch.grad_bias != nullptr) ch.grad_bias[c] = T(sums.dy);
  if (!b.training) return {T(mean), T(0), T(0), T(invstd * w)};
  return {T(mean), T(sums.dy / n), T(sums.dy_xmu * invstd * invstd / n), T(invstd * w)};
}

template <typename T>
void grad_run(const T* dy, const T* x, T* dx, int64_t n, const GradAffine<T>& g) {
  const Vec<T> mean(g.mean), dy_mean(g.dy_mean), k(g.k), scale(g.scale);
  int64_t i = 0;
  for (; i + Vec<T>::size() <= n; i += Vec<T>::size()) {
    const Vec<T> centered = Vec<T>::loadu(dy + i) - dy_mean - (Vec<T>::loadu(x + i) - mean) * k;
    (centered * scale).store(dx + i);
  }
  for (; i < n; ++i) dx[i] = (dy[i] - g.dy_mean - (x[i] - g.mean) * g.k) * g.scale;
}

// Whether the per-channel sums are needed: always in training; in eval only for weight and bias.
bool needs_sums(const BatchNormBackward& b) {
  return b.training || b.grad_weight.defined() || b.grad_bias.defined();
}

template <typename T>
void backward_channel_at_a_time(const BatchNormBackward& b) {
  const BatchNormShape& s = b.problem.shape;
  const T* dy = b.grad_output.const_data_ptr<T>();
  const T* x = b.input.const_data_ptr<T>();
  T* dx = b.grad_input.defined() ? b.grad_input.data_ptr<T>() : nullptr;
  const GradChannels<T> ch = channels_of<T>(b);
  at::parallel_for(0, s.channels, grain_for(s.count()), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const auto plane = [&](int64_t n) { return (n * s.channels + c) * s.spatial; };
      GradSums sums;
      for (int64_t n = 0; n < s.batch; ++n) add_grad(dy + plane(n), x + plane(n), s.spatial, double(ch.mean[c]), sums);
      const GradAffine<T> g = channel_grads<T>(b, ch, c, sums);
      if (dx == nullptr) continue;
      for (int64_t n = 0; n < s.batch; ++n) grad_run(dy + plane(n), x + plane(n), dx + plane(n), s.spatial, g);
    }
  });
}

template <typename T>
void backward(const BatchNormBackward& b) {
  const BatchNormShape& s = b.problem.shape;
  const int64_t C = s.channels;
  if (b.training && s.layout == Layout::nchw && s.spatial >= kChannelAtATime) return backward_channel_at_a_time<T>(b);
  const T* dy = b.grad_output.const_data_ptr<T>();
  const T* x = b.input.const_data_ptr<T>();
  const T* mean = b.save_mean.const_data_ptr<T>();
  std::vector<std::pair<double, double>> sums(C, {0.0, 0.0});
  if (needs_sums(b) && s.layout == Layout::nchw) {
    sums = memory_order_sums(s.batch * C, 2 * s.spatial, C, [&](int64_t plane, double* s1, double* s2) {
      const int64_t c = plane % C;
      GradSums g;
      add_grad(dy + plane * s.spatial, x + plane * s.spatial, s.spatial, double(mean[c]), g);
      s1[c] += g.dy;
      s2[c] += g.dy_xmu;
    });
  } else if (needs_sums(b)) {
    using V = Vec<T>;
    sums = row_sums<T>(s.count(), C, [dy, x, C, mean](int64_t row, T* acc1, T* acc2) {
      const T* d = dy + row * C;
      const T* xr = x + row * C;
      int64_t c = 0;
      for (; c + V::size() <= C; c += V::size()) {
        const V dv = V::loadu(d + c);
        (V::loadu(acc1 + c) + dv).store(acc1 + c);
        at::vec::fmadd(dv, V::loadu(xr + c) - V::loadu(mean + c), V::loadu(acc2 + c)).store(acc2 + c);
      }
      for (; c < C; ++c) {
        acc1[c] += d[c];
        acc2[c] += d[c] * (xr[c] - mean[c]);
      }
    });
  }
  const GradChannels<T> ch = channels_of<T>(b);
  std::vector<GradAffine<T>> g(C);
  for (int64_t c = 0; c < C; ++c) g[c] = channel_grads<T>(b, ch, c, {sums[c].first, sums[c].second});
  if (!b.grad_input.defined()) return;
  T* dx = b.grad_input.data_ptr<T>();
  if (s.layout == Layout::nchw) {
    at::parallel_for(0, s.batch * C, grain_for(s.spatial), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        grad_run(dy + p * s.spatial, x + p * s.spatial, dx + p * s.spatial, s.spatial, g[p % C]);
      }
    });
    return;
  }
  std::vector<T> params(4 * C);  // per channel, laid out like a row: mean, dy_mean, k, scale
  for (int64_t c = 0; c < C; ++c) {
    params[c] = g[c].mean;
    params[C + c] = g[c].dy_mean;
    params[2 * C + c] = g[c].k;
    params[3 * C + c] = g[c].scale;
  }
  const T* gm = params.data();
  const T* dm = gm + C;
  const T* gk = dm + C;
  const T* gs = gk + C;
  at::parallel_for(0, s.count(), grain_for(C), [=](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      const T* dyr = dy + row * C;
      const T* xr = x + row * C;
      T* dxr = dx + row * C;
      int64_t c = 0;
      for (; c + Vec<T>::size() <= C; c += Vec<T>::size()) {
        const Vec<T> centered = Vec<T>::loadu(dyr + c) - Vec<T>::loadu(dm + c) -
                                (Vec<T>::loadu(xr + c) - Vec<T>::loadu(gm + c)) * Vec<T>::loadu(gk + c);
        (centered * Vec<T>::loadu(gs + c)).store(dxr + c);
      }
      for (; c < C; ++c) dxr[c] = (dyr[c] - dm[c] - (xr[c] - gm[c]) * gk[c]) * gs[c];
    }
  });
}

// ---- the CPU backend of BatchNormOps (common/batch_norm_ops.h) ------------------------------------

struct CpuBatchNorm {
  static constexpr bool kReducedPrecision = false;

  static void forward(const BatchNormForward& f) {
    AT_DISPATCH_FLOATING_TYPES(f.input.scalar_type(), "fastdl.batch_norm", [&] { fastdl::forward<scalar_t>(f); });
  }

  static void backward(const BatchNormBackward& b) {
    AT_DISPATCH_FLOATING_TYPES(b.input.scalar_type(), "fastdl.batch_norm_backward",
                               [&] { fastdl::backward<scalar_t>(b); });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, CPU, m) { BatchNormOps<CpuBatchNorm>::define_kernels(m); }

}  // namespace fastdl
