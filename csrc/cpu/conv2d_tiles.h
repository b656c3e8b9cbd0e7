#pragma once
// The register-blocked inner kernels of the CPU convolution (csrc/cpu/conv2d.cpp).
//
// Both work on "rows": runs of pixels that are contiguous in a buffer. A convolution over a prepared
// buffer (padded input for the forward, padded grad_output for the input gradient) is, for each
// output pixel p of a row,
//
//   out[k][p] = init[k] + sum_{c < channels} sum_{t < taps} w[k][c][t] * in[c * cs + tap[t] + p]
//
// with tap[t] the offset of kernel tap t from the row's start. conv_tile computes KT output
// channels x VT vectors of pixels with all KT*VT accumulators in registers: per (c, t) it loads VT
// input vectors and broadcasts KT weights (packed [c][t][KT] so they are adjacent), then KT*VT fused
// multiply-adds. KT = 4, VT = 3 takes 12 of the 16 AVX2 registers and does 12 FMAs per 7 loads.
//
// weight_grad_tile is the transpose: acc[k][q] = sum_p dy[k][p] * x[q][p] over whole rows, with
// vectors along the pixels and one horizontal sum per accumulator at the end.

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <c10/macros/Macros.h>

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include "cpu/vec_partial.h"

namespace fastdl {

enum class TileInit { zero, bias, accumulate };

// How a conv_tile reads its inputs and writes its outputs. Step i of the reduction (reduction channel
// c, tap t) reads at offsets[i] = c * cs + tap[t] from a vector's start: one flat loop, which keeps
// the compiler from spilling the accumulators between channels.
// The weights are packed ([step][KT], the KT values of a step adjacent) unless weight_offsets is set:
// then output channel j's weight for step i is at w[j * weight_row_stride + weight_offsets[i]] (read
// in place from the weight tensor; see conv2d_blocks.h's TiledConv::InPlace).
struct TileGeometry {
  int64_t steps;
  const int64_t* offsets;
  int64_t out_channel_stride;  // between output channels
  int64_t out_pixel_stride;    // between neighbouring output pixels (1, or K for channels-last)
  const int64_t* weight_offsets = nullptr;
  int64_t weight_row_stride = 0;
};

// Where a vector's output pixels leave their run: from lane `lane` on, each `period` lanes, they lie
// `jump` elements further on. A vector of pixels in flat order across a batch (pointwise_tiles) whose
// first `lane` pixels end an image: lane l >= lane is in the (1 + (l - lane) / period)-th image after
// it, period being the image's pixels. The default never jumps.
struct LaneJumps {
  int64_t lane = INT64_MAX, period = 1, jump = 0;

  int64_t offset(int64_t l, int64_t stride) const {
    return l * stride + (l < lane ? 0 : (1 + (l - lane) / period) * jump);
  }
};

template <typename T>
Vec<T> load_pixels(const T* p, int64_t count, int64_t stride) {
  constexpr int64_t V = Vec<T>::size();
  if (stride == 1) return count == V ? Vec<T>::loadu(p) : load_partial(p, count);
  T lanes[V] = {};
  for (int64_t l = 0; l < count; ++l) lanes[l] = p[l * stride];
  return Vec<T>::loadu(lanes);
}

template <typename T>
void store_pixels(T* p, const Vec<T>& v, int64_t count, int64_t stride) {
  constexpr int64_t V = Vec<T>::size();
  if (stride == 1) {
    if (count == V) {
      v.store(p);
    } else {
      store_partial(p, v, count);
    }
    return;
  }
  T lanes[V];
  v.store(lanes);
  for (int64_t l = 0; l < count; ++l) p[l * stride] = lanes[l];
}

// load_pixels and store_pixels of a vector whose pixels may leave their run.
template <typename T>
Vec<T> load_pixels(const T* p, int64_t count, int64_t stride, const LaneJumps& jumps) {
  if (jumps.lane >= count) return load_pixels(p, count, stride);
  T lanes[Vec<T>::size()] = {};
  for (int64_t l = 0; l < count; ++l) lanes[l] = p[jumps.offset(l, stride)];
  return Vec<T>::loadu(lanes);
}

template <typename T>
void store_pixels(T* p, const Vec<T>& v, int64_t count, int64_t stride, const LaneJumps& jumps) {
  if (jumps.lane >= count) return store_pixels(p, v, count, stride);
  T lanes[Vec<T>::size()];
  v.store(lanes);
  for (int64_t l = 0; l < count; ++l) p[jumps.offset(l, stride)] = lanes[l];
}

// Vectors in the tile that starts at vector q of `vectors`: VT, except that a run ending in a single
// vector ends in two shorter tiles instead (VT + 1 left: VT - 1, then 2), since a one-vector tile holds
// KT accumulators only and runs at about half the FMA rate. One thread, 512x512 3x3 on 7x7 at batch 1
// (7 vectors per unit: 3 + 3 + 1 -> 3 + 2 + 2): forward 4.50 -> 4.19 ms, input gradient 4.96 -> 4.65 ms.
template <int VT>
int tile_width(int64_t q, int64_t vectors) {
  const int64_t left = vectors - q;
  return int(VT > 2 && left == VT + 1 ? VT - 1 : std::min<int64_t>(VT, left));
}

// acc[j][v] += sum over the steps i of weight(i, j) * src[v][offsets[i]]: one flat loop.
template <typename T, int KT, int VT, typename Weight>
C10_ALWAYS_INLINE void tile_steps(Vec<T> (&acc)[KT][VT], const T* const (&src)[VT], const TileGeometry& g,
                                    const Weight& weight) {
  for (int64_t i = 0; i < g.steps; ++i) {
    const int64_t o = g.offsets[i];
    Vec<T> x[VT];
    for (int v = 0; v < VT; ++v) x[v] = Vec<T>::loadu(src[v] + o);
    for (int j = 0; j < KT; ++j) {
      const Vec<T> wj(weight(i, j));
      for (int v = 0; v < VT; ++v) acc[j][v] = at::vec::fmadd(x[v], wj, acc[j][v]);
    }
  }
}

// One tile of KT output channels (the first kvalid are stored) x VT vectors. Vector v's first pixel
// reads in[v] (reduction channel 0, tap offset 0) and writes out[v] (output channel 0 of the block),
// for count[v] <= V pixels (placed by jumps[v] where kJumps); buffers have at least V readable elements
// past the last pixel any vector needs, so loads are always full. w: the block's weights, packed
// [channels][ntaps][KT] or in place (TileGeometry). init: zero, bias[0, KT), or the values already in
// out. Tiles with jumps are a separate instantiation: read in every tile, they made ResNet-50's 1x1
// 64->256 on 56x56 at batch 8 10% slower (one thread, 12.5 -> 13.8 ms), the tile's ends being a
// large part of a reduction over 64 channels.
template <typename T, int KT, int VT, bool kJumps = false>
void conv_tile(const T* const* in, T* const* out, const int64_t* count, const TileGeometry& g, const T* w,
               TileInit init, const T* bias, int64_t kvalid, const LaneJumps* jumps = nullptr) {
  Vec<T> acc[KT][VT];
  for (int j = 0; j < KT; ++j) {
    for (int v = 0; v < VT; ++v) {
      if (init == TileInit::accumulate && j < kvalid) {
        const T* at = out[v] + j * g.out_channel_stride;
        if constexpr (kJumps) {
          acc[j][v] = load_pixels(at, count[v], g.out_pixel_stride, jumps[v]);
        } else {
          acc[j][v] = load_pixels(at, count[v], g.out_pixel_stride);
        }
      } else {
        acc[j][v] = Vec<T>(init == TileInit::bias ? bias[j] : T(0));
      }
    }
  }
  const T* src[VT];
  for (int v = 0; v < VT; ++v) src[v] = in[v];
  if (g.weight_offsets == nullptr) {
    tile_steps<T, KT, VT>(acc, src, g, [w](int64_t i, int j) { return w[i * KT + j]; });
  } else {
    // Rows past kvalid (the last block of a layer) read the last valid row; their sums are dropped.
    const T* row[KT];
    for (int j = 0; j < KT; ++j) row[j] = w + std::min<int64_t>(j, kvalid - 1) * g.weight_row_stride;
    const int64_t* wo = g.weight_offsets;
    tile_steps<T, KT, VT>(acc, src, g, [&row, wo](int64_t i, int j) { return row[j][wo[i]]; });
  }
  for (int j = 0; j < kvalid; ++j) {
    for (int v = 0; v < VT; ++v) {
      T* at = out[v] + j * g.out_channel_stride;
      if constexpr (kJumps) {
        store_pixels(at, acc[j][v], count[v], g.out_pixel_stride, jumps[v]);
      } else {
        store_pixels(at, acc[j][v], count[v], g.out_pixel_stride);
      }
    }
  }
}

// conv_tile with the first `vectors` <= VT of in, out, count and jumps (kJumps).
template <typename T, int KT, int VT, bool kJumps = false>
void conv_tile_upto(const T* const* in, T* const* out, const int64_t* count, const TileGeometry& g, const T* w,
                    TileInit init, const T* bias, int64_t kvalid, int vectors, const LaneJumps* jumps = nullptr) {
  if constexpr (VT > 1) {
    if (vectors < VT) {
      return conv_tile_upto<T, KT, VT - 1, kJumps>(in, out, count, g, w, init, bias, kvalid, vectors, jumps);
    }
  }
  conv_tile<T, KT, VT, kJumps>(in, out, count, g, w, init, bias, kvalid, jumps);
}

template <typename T>
T horizontal_sum(const Vec<T>& v) {
  constexpr int64_t V = Vec<T>::size();
  T lanes[V];
  v.store(lanes);
  T sum = 0;
  for (int64_t l = 0; l < V; ++l) sum += lanes[l];
  return sum;
}

// The pixels a weight_grad_tile sums over, as steps of one vector: step i reads grad_output channel
// j of the block at dy[i] + dy_offset[j] and the input of pair q at x[i] + x_offset[q]. Steps
// [0, full) are full vectors, steps [full, count) the first `rest` pixels of one (row ends).
template <typename T>
struct GradSteps {
  const T* const* dy;
  const T* const* x;
  int64_t full, count, rest;
};

// dw[j * ld + q] += sum over the steps' pixels of dy_j * x_q, for j < kvalid, q < qvalid (offsets of
// the other channels and pairs repeat valid ones; their sums are dropped). Partial steps are masked on
// both operands: an infinite input next to a row must not leak into the sums. One flat loop per
// kind of step keeps the accumulators in registers.
template <typename T, int KT, int J>
void weight_grad_tile(const GradSteps<T>& steps, const int64_t* dy_offset, const int64_t* x_offset, T* dw,
                      int64_t ld, int64_t kvalid, int64_t qvalid) {
  Vec<T> acc[KT][J];
  for (int j = 0; j < KT; ++j) {
    for (int q = 0; q < J; ++q) acc[j][q] = Vec<T>(T(0));
  }
  int64_t dyo[KT], xo[J];
  for (int j = 0; j < KT; ++j) dyo[j] = dy_offset[j];
  for (int q = 0; q < J; ++q) xo[q] = x_offset[q];
  const auto step = [&](int64_t i, auto load) {
    Vec<T> xs[J];  // J + 1 + KT*J registers: one grad_output vector at a time
    for (int q = 0; q < J; ++q) xs[q] = load(steps.x[i] + xo[q]);
    for (int j = 0; j < KT; ++j) {
      const Vec<T> d = load(steps.dy[i] + dyo[j]);
      for (int q = 0; q < J; ++q) acc[j][q] = at::vec::fmadd(d, xs[q], acc[j][q]);
    }
  };
  for (int64_t i = 0; i < steps.full; ++i) step(i, [](const T* a) { return Vec<T>::loadu(a); });
  const int64_t rest = steps.rest;
  for (int64_t i = steps.full; i < steps.count; ++i) step(i, [rest](const T* a) { return load_partial(a, rest); });
  for (int j = 0; j < kvalid; ++j) {
    for (int q = 0; q < qvalid; ++q) dw[j * ld + q] += horizontal_sum(acc[j][q]);
  }
}

// The channel-vector form of the weight gradient, for small maps whose rows fill pixel vectors badly:
// vectors run along VT*V output channels instead of pixels, so any set of pixels is summed without
// masks or horizontal sums. dy holds the block's grad_output pixel-major, [pixel][VT * V] (zero past
// the last channel); pair q of pixel i reads the input at x[pos[i] + x_offset[q]], broadcast.
// dw[k * ld + q] += the sums, for channels k < kvalid and pairs q < qvalid (offsets of other pairs
// repeat valid ones).
template <typename T, int J, int VT>
void weight_grad_channel_tile(const T* dy, const T* x, const int64_t* pos, int64_t pixels, const int64_t* x_offset,
                              T* dw, int64_t ld, int64_t kvalid, int64_t qvalid) {
  constexpr int64_t V = Vec<T>::size();
  Vec<T> acc[J][VT];
  for (int q = 0; q < J; ++q) {
    for (int v = 0; v < VT; ++v) acc[q][v] = Vec<T>(T(0));
  }
  int64_t xo[J];
  for (int q = 0; q < J; ++q) xo[q] = x_offset[q];
  for (int64_t i = 0; i < pixels; ++i, dy += VT * V) {
    Vec<T> d[VT];
    for (int v = 0; v < VT; ++v) d[v] = Vec<T>::loadu(dy + v * V);
    const T* xi = x + pos[i];
    for (int q = 0; q < J; ++q) {
      const Vec<T> xq(xi[xo[q]]);
      for (int v = 0; v < VT; ++v) acc[q][v] = at::vec::fmadd(d[v], xq, acc[q][v]);
    }
  }
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float> && V == 8 && J == 4) {
    if (qvalid == J) {  // the sums of 8 channels x 4 pairs transposed in registers: a 4-float add per channel
      for (int v = 0; v < VT; ++v) {
        const __m256 t0 = _mm256_unpacklo_ps(acc[0][v], acc[1][v]), t1 = _mm256_unpackhi_ps(acc[0][v], acc[1][v]);
        const __m256 t2 = _mm256_unpacklo_ps(acc[2][v], acc[3][v]), t3 = _mm256_unpackhi_ps(acc[2][v], acc[3][v]);
        const __m256 rows[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xEE),
                                _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xEE)};
        for (int64_t l = 0; l < V && v * V + l < kvalid; ++l) {  // channel v*V + l: lane l % 4 of half l / 4
          const __m128 sums = l < 4 ? _mm256_castps256_ps128(rows[l]) : _mm256_extractf128_ps(rows[l - 4], 1);
          float* row = dw + (v * V + l) * ld;
          _mm_storeu_ps(row, _mm_add_ps(_mm_loadu_ps(row), sums));
        }
      }
      return;
    }
  }
#endif
  for (int q = 0; q < qvalid; ++q) {
    for (int v = 0; v < VT; ++v) {
      T lanes[V];
      acc[q][v].store(lanes);
      for (int64_t l = 0; l < V && v * V + l < kvalid; ++l) dw[(v * V + l) * ld + q] += lanes[l];
    }
  }
}

}  // namespace fastdl
