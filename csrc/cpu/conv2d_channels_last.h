#pragma once
// Channels-last (N,H,W,C) convolution on the CPU, forward and input gradient, with vectors along the
// output channels (csrc/cpu/conv2d.cpp takes it where channel_vectors says so). The row kernels
// (conv2d_tiles.h) vectorize along pixels, so they read a channels-last input transposed into rows and
// store its outputs lane by lane; here a pixel's channels are already a vector.
//
// A channel-vector convolution computes, for a list of output pixels p,
//
//   out[p][k] = bias[k] + sum_t sum_c w[t][c][k] * src[p][tap[t] + c]
//
// src[p] pointing at the pixel's first input in a channels-last buffer (zero-padded where the kernel
// reads padding) and tap[t] the offset of kernel tap t from it. channel_vector_tile holds PT pixels x
// VT vectors of output channels in registers: per (t, c) it loads VT weight vectors (packed
// [t][c][VT * V], adjacent) and broadcasts PT inputs, then PT * VT fused multiply-adds. PT = 6, VT = 2
// take 15 of the 16 AVX2 registers and do 12 FMAs per 8 loads. The pixels of a tile need not be
// neighbours: each has its own pointers, so tiles run across rows and images without short ends.

#include <ATen/Parallel.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <type_traits>
#include <vector>

#include "common/conv2d_ops.h"
#include "common/conv2d_shape.h"
#include "common/overrides.h"
#include "cpu/conv2d_blocks.h"
#include "cpu/conv2d_phases.h"
#include "cpu/scratch.h"
#include "cpu/vec_partial.h"
#include "cpu/work_split.h"

namespace fastdl::conv2d_cpu {

constexpr int kChannelTilePixels = 6;
constexpr int kChannelTileVectors = 2;

template <typename T>
constexpr int64_t kChannelBlock = kChannelTileVectors * Vec<T>::size();  // output channels per tile

// What a tile reads besides its pixels: the block's packed weights ([tap][reduction channel][block]),
// its bias (or null: zeros) and how many of its output channels exist.
template <typename T>
struct ChannelBlockArgs {
  const int64_t* taps;
  int64_t ntaps, channels;
  const T* w;
  const T* bias;
  int64_t kvalid;
  bool stream = false;  // full, aligned output vectors stored around the caches
};

// A non-temporal store of a 32-byte-aligned vector (a plain store without AVX2).
template <typename T>
C10_ALWAYS_INLINE void stream_store(T* p, const Vec<T>& v) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    _mm256_stream_ps(p, v);
  } else {
    _mm256_stream_pd(p, v);
  }
#else
  v.store(p);
#endif
}

// Pixels [0, P) of a tile: src[i], out[i]; P <= PT valid.
template <typename T, int PT>
void channel_vector_tile(const T* const* src, T* const* out, int pixels, const ChannelBlockArgs<T>& p) {
  constexpr int VT = kChannelTileVectors;
  constexpr int64_t V = Vec<T>::size();
  if constexpr (PT > 1) {
    if (pixels < PT) return channel_vector_tile<T, PT - 1>(src, out, pixels, p);
  }
  Vec<T> acc[PT][VT];
  for (int v = 0; v < VT; ++v) {
    const Vec<T> init = p.bias ? Vec<T>::loadu(p.bias + v * V) : Vec<T>(T(0));
    for (int i = 0; i < PT; ++i) acc[i][v] = init;
  }
  const T* at[PT];
  for (int i = 0; i < PT; ++i) at[i] = src[i];
  const T* w = p.w;
  for (int64_t t = 0; t < p.ntaps; ++t, w += p.channels * VT * V) {
    const int64_t o = p.taps[t];
    const T* wc = w;
    for (int64_t c = o; c < o + p.channels; ++c, wc += VT * V) {
      Vec<T> wv[VT];
      for (int v = 0; v < VT; ++v) wv[v] = Vec<T>::loadu(wc + v * V);
      for (int i = 0; i < PT; ++i) {
        const Vec<T> x(at[i][c]);
        for (int v = 0; v < VT; ++v) acc[i][v] = at::vec::fmadd(x, wv[v], acc[i][v]);
      }
    }
  }
  for (int i = 0; i < PT; ++i) {
    for (int v = 0; v < VT; ++v) {
      const int64_t lanes = std::min<int64_t>(V, p.kvalid - v * V);
      if (lanes == V && p.stream && reinterpret_cast<uintptr_t>(out[i] + v * V) % 32 == 0) {
        stream_store(out[i] + v * V, acc[i][v]);
      } else if (lanes == V) {
        acc[i][v].store(out[i] + v * V);
      } else if (lanes > 0) {
        store_partial(out[i] + v * V, acc[i][v], lanes);
      }
    }
  }
}

// A channel-vector convolution of one call: `pixels` output pixels placed by pixel(p, &src, &out)
// (their first input and output, group 0), over `groups` groups of `reds` reduction and `outs` output
// channels each (group g reads from src + g * reds, writes to out + g * outs). Weights packed by
// pack_channel_vector_weights, bias packed likewise ([group][block][kChannelBlock]) or null.
template <typename T>
struct ChannelVectorConv {
  int64_t groups, reds, outs;
  std::vector<int64_t> taps;
  const T* weights;
  const T* bias;

  int64_t blocks() const { return div_up(outs, kChannelBlock<T>); }
  int64_t block_weights() const { return int64_t(taps.size()) * reds * kChannelBlock<T>; }
};

// A view of a weight tensor as the channel-vector convolution reads it: group g, output channel o,
// reduction channel r and tap t at data[g * group + o * out + r * red + taps[t]].
template <typename T>
struct WeightView {
  const T* data;
  int64_t group, out, red;
  const int64_t* taps;
};

// Packs `w` as [group][block of kChannelBlock outputs][tap][reduction channel][kChannelBlock], zeros
// past `outs`: a transposition, in chunks of reduction channels whose packed values (16 KB) are
// gathered in a buffer that stays in L1 while the weight is read in its own order, then copied out
// tap by tap. Written straight to their places in tap order (reds * kChannelBlock apart, 32 KB for 512
// channels: the L1 cache's way size) the packing of a 512x512 3x3 layer took 26% of perf's samples of
// its forward on 7x7 at batch 1, the tiles 17%; this way 14% and 15% (kChannelVectorPixels).
template <typename T>
Scratch<T> pack_channel_vector_weights(int64_t groups, int64_t outs, int64_t reds, int64_t ntaps,
                                       const WeightView<T>& w) {
  constexpr int64_t B = kChannelBlock<T>;
  const int64_t blocks = div_up(outs, B), per_block = ntaps * reds * B;
  if (ntaps == 0) return Scratch<T>();  // a phase no tap reaches
  const int64_t chunk = std::clamp<int64_t>(4096 / (ntaps * B), 1, reds), chunks = div_up(reds, chunk);
  Scratch<T> packed(groups * blocks * per_block);
  at::parallel_for(0, groups * blocks * chunks, 1, [&](int64_t i0, int64_t i1) {
    std::vector<T> buf(ntaps * chunk * B);  // [tap][reduction channel of the chunk][B]
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t gb = i / chunks, g = gb / blocks, o0 = gb % blocks * B;
      const int64_t r0 = i % chunks * chunk, rn = std::min(reds - r0, chunk), lanes = std::min(B, outs - o0);
      const T* const src = w.data + g * w.group + o0 * w.out + r0 * w.red;
      const auto gather = [&](int64_t l, int64_t r) {
        const T* from = src + l * w.out + r * w.red;
        for (int64_t t = 0; t < ntaps; ++t) buf[(t * chunk + r) * B + l] = from[w.taps[t]];
      };
      if (lanes < B) std::fill(buf.begin(), buf.end(), T(0));
      for (int64_t outer = 0; outer < (w.out < w.red ? rn : lanes); ++outer) {  // the weight's inner axis inside
        for (int64_t inner = 0; inner < (w.out < w.red ? lanes : rn); ++inner) {
          w.out < w.red ? gather(inner, outer) : gather(outer, inner);
        }
      }
      T* const dst = packed.get() + gb * per_block + r0 * B;
      for (int64_t t = 0; t < ntaps; ++t) std::copy_n(buf.data() + t * chunk * B, rn * B, dst + t * reds * B);
    }
  });
  return packed;
}

// Runs the convolution over pixels [0, pixels). The output-channel blocks go in groups whose weights
// fit kGroupWeightBytes (half the L2 cache; one block at least) and the pixels in chunks of
// kChunkPixels; items are (block group, pixel chunk), group-major, and an item runs its group's
// blocks one after the other over its chunk, so that the chunk's inputs are read from memory once
// per group and the group's weights once per thread. Blocks one by one over every pixel, as first
// written, read a 1x1 input gradient's grad_output from memory once per block of 16 channels: 64 <-
// 256 on 56x56 at batch 8 ran at 50 GFLOP/s, a 3x3 layer at 120 (bench/NOTES.md, convolution 38).
constexpr int64_t kGroupWeightBytes = 256 * 1024;
constexpr int64_t kChunkPixels = 96;

// Outputs of at least kStreamOutputBytes are stored around the caches (non-temporal stores), which
// would only evict them before the next layer could read them, and cost a read of every line first.
// Two threads, time streamed over cached (bench/NOTES.md, convolution 38): 64 -> 256 1x1 on 56x56 at
// batch 8 (26 MB) 0.83, VGG-16's features.0 at batch 8 (103 MB) 0.93; but at batch 1 (13 MB) 1.03.
constexpr int64_t kStreamOutputBytes = int64_t(16) << 20;

template <typename T, typename Pixel>
void run_channel_vector_conv(const ChannelVectorConv<T>& cv, int64_t pixels, Pixel&& pixel) {
  constexpr int PT = kChannelTilePixels;
  constexpr int64_t B = kChannelBlock<T>;
  const int64_t blocks = cv.groups * cv.blocks(), tiles = div_up(pixels, PT);
  const int64_t per_group = std::clamp<int64_t>(kGroupWeightBytes / (cv.block_weights() * int64_t(sizeof(T))), 1,
                                                blocks);
  const int64_t block_groups = div_up(blocks, per_group);
  const int64_t chunks = std::clamp<int64_t>(
      std::max(div_up(pixels, kChunkPixels), div_up(4 * at::get_num_threads(), block_groups)), 1, tiles);
  const bool stream = pixels * cv.groups * cv.outs * int64_t(sizeof(T)) >= kStreamOutputBytes;
  at::parallel_for(0, block_groups * chunks, 1, [&](int64_t i0, int64_t i1) {
    std::vector<const T*> src;
    std::vector<T*> out;
    for (int64_t i = i0; i < i1; ++i) {
      const Range tr = part_of(tiles, chunks, i % chunks);
      const int64_t p0 = tr.begin * PT, count = std::min(pixels, tr.end * PT) - p0;
      src.resize(count);
      out.resize(count);
      for (int64_t q = 0; q < count; ++q) pixel(p0 + q, &src[q], &out[q]);
      const int64_t gb0 = i / chunks * per_group;
      for (int64_t gb = gb0; gb < std::min(blocks, gb0 + per_group); ++gb) {
        const int64_t g = gb / cv.blocks(), o0 = gb % cv.blocks() * B;
        const ChannelBlockArgs<T> args{cv.taps.data(), int64_t(cv.taps.size()), cv.reds,
                                       cv.weights + gb * cv.block_weights(), cv.bias ? cv.bias + gb * B : nullptr,
                                       std::min(B, cv.outs - o0), stream};
        for (int64_t q = 0; q < count; q += PT) {
          const int n = int(std::min<int64_t>(PT, count - q));
          const T* tile_src[PT];
          T* tile_out[PT];
          for (int j = 0; j < n; ++j) {
            tile_src[j] = src[q + j] + g * cv.reds;
            tile_out[j] = out[q + j] + g * cv.outs + o0;
          }
          channel_vector_tile<T, PT>(tile_src, tile_out, n, args);
        }
      }
    }
#if defined(CPU_CAPABILITY_AVX2)
    if (stream) _mm_sfence();
#endif
  });
}

// Whether a channels-last convolution's forward or input gradient runs as a channel-vector
// convolution: its outputs (output channels per group for the forward, input channels per group for
// the input gradient) fill a vector, and its tiles compute at least kChannelVectorPixels pixels (output
// pixels for the forward, input pixels for the input gradient) over which packing every weight once
// pays. New over rows (FASTDL_CONV_CHANNEL_VECTORS=never), two threads (bench/NOTES.md, convolution
// entry 38): 512x512 3x3 on 7x7 maps forward / input gradient at batch 1 (49 pixels) 1.56 / 1.25 times
// the time, batch 2 1.21 / 0.89, batch 4 1.00 / 0.76; 2048 -> 512 1x1 at batch 1 1.32 / 2.25, 1024 -> 256
// on 14x14 (196 pixels) 0.77 / 1.00. FASTDL_CONV_CHANNEL_VECTORS = always | never overrides the rule for
// channels-last calls.
constexpr int64_t kChannelVectorPixels = 128;

template <typename T>
bool channel_vectors(const Conv2dShape& s, int64_t outs, int64_t pixels) {
  return s.layout == Layout::nhwc &&
         override_or("FASTDL_CONV_CHANNEL_VECTORS", outs >= Vec<T>::size() && pixels >= kChannelVectorPixels);
}

// A channels-last buffer of images: pixel (h, w) of image n at data + n * image + h * row + w * pixel.
template <typename T>
struct ImageRows {
  const T* data;
  int64_t image, row, pixel;
};

// `images` images of `source` (from image n0) with `top` / `left` zero rows / columns before each
// and `bottom` / `right` after, in `buffer`; or the source itself where nothing is to be added.
template <typename T>
ImageRows<T> padded_images(const Strided4d<const T>& source, int64_t n0, int64_t images, int64_t channels,
                           int64_t h, int64_t w, int64_t top, int64_t left, int64_t bottom, int64_t right,
                           Scratch<T>& buffer) {
  if (top == 0 && left == 0 && bottom == 0 && right == 0) return {source.data + n0 * source.sn, source.sn,
                                                                   source.sh, source.sw};
  const int64_t rows = top + h + bottom, cols = left + w + right;
  T* dst = buffer.at_least(images * rows * cols * channels);
  at::parallel_for(0, images * rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* row = dst + r * cols * channels;
      const int64_t ih = r % rows - top;
      if (ih < 0 || ih >= h) {
        std::fill(row, row + cols * channels, T(0));
        continue;
      }
      const T* from = source.data + (n0 + r / rows) * source.sn + ih * source.sh;
      std::fill(row, row + left * channels, T(0));
      std::copy(from, from + w * channels, row + left * channels);
      std::fill(row + (left + w) * channels, row + cols * channels, T(0));
    }
  });
  return {dst, rows * cols * channels, cols * channels, channels};
}

// Images per pass of a padded copy of `per_image` elements each.
inline int64_t images_per_pass(int64_t batch, int64_t per_image) {
  return std::clamp<int64_t>(kMaxColumnElements / std::max<int64_t>(per_image, 1), 1, batch);
}

template <typename T>
void forward_channels_last(const Conv2dForward& f) {
  constexpr int64_t B = kChannelBlock<T>;
  const Conv2dShape& s = f.shape;
  const auto x = strided<const T>(f.input);
  const auto y = strided<T>(f.output);
  const int64_t Cg = s.in_per_group(), Kg = s.out_per_group(), ntaps = s.taps();
  const T* wt = f.weight.const_data_ptr<T>();  // (K, Cg, R, S)
  std::vector<int64_t> taps(ntaps);
  std::iota(taps.begin(), taps.end(), int64_t(0));
  const Scratch<T> weights =
      pack_channel_vector_weights<T>(s.groups, Kg, Cg, ntaps, {wt, Kg * Cg * ntaps, Cg * ntaps, ntaps, taps.data()});
  const std::vector<T> bias = pack_bias<T>(f.bias, s.groups, Kg, B);
  const int64_t pad_rows = s.in_h + 2 * s.pad_h, pad_cols = s.in_w + 2 * s.pad_w;
  const int64_t chunk = images_per_pass(s.batch, pad_rows * pad_cols * s.in_channels), plane = s.out_h * s.out_w;
  Scratch<T> buffer;
  for (int64_t n0 = 0; n0 < s.batch; n0 += chunk) {
    const int64_t images = std::min(chunk, s.batch - n0);
    const ImageRows<T> in = padded_images(x, n0, images, s.in_channels, s.in_h, s.in_w, s.pad_h, s.pad_w, s.pad_h,
                                          s.pad_w, buffer);
    ChannelVectorConv<T> cv{s.groups, Cg, Kg, {}, weights.get(), bias.empty() ? nullptr : bias.data()};
    for (int64_t r = 0; r < s.kernel_h; ++r) {
      for (int64_t q = 0; q < s.kernel_w; ++q) {
        cv.taps.push_back(r * s.dilation_h * in.row + q * s.dilation_w * in.pixel);
      }
    }
    T* const out = y.data + n0 * y.sn;
    run_channel_vector_conv(cv, images * plane, [&](int64_t p, const T** src, T** dst) {
      const int64_t n = p / plane, oh = p % plane / s.out_w, ow = p % s.out_w;
      *src = in.data + n * in.image + oh * s.stride_h * in.row + ow * s.stride_w * in.pixel;
      *dst = out + n * y.sn + oh * y.sh + ow * y.sw;
    });
  }
}

// The input gradient phase by phase (conv2d_phases.h): in phase (a, a_w), grad_input pixel
// (a + stride * i, a_w + stride * j) is a channel-vector convolution of grad_output around (i, j) with
// the phase's taps of the transposed weights.
template <typename T>
void grad_input_channels_last(const Conv2dBackward& b) {
  const Conv2dShape& s = b.shape;
  const auto dy = strided<const T>(b.grad_output);
  const auto dx = strided<T>(b.grad_input);
  const int64_t Cg = s.in_per_group(), Kg = s.out_per_group(), all_taps = s.taps();
  const T* wt = b.weight.const_data_ptr<T>();  // (K, Cg, R, S)
  const std::vector<Phase> phases = strided_phases(s);
  // grad_output's padding: enough for every phase's taps to read inside it.
  int64_t top = 0, left = 0, bottom = 0, right = 0;
  for (const Phase& ph : phases) {
    if (ph.tap_index.empty()) continue;
    top = std::max(top, -ph.th.min_offset);
    left = std::max(left, -ph.tw.min_offset);
    bottom = std::max(bottom, ph.rows_out + ph.th.max_offset - s.out_h);
    right = std::max(right, ph.cols_out + ph.tw.max_offset - s.out_w);
  }
  std::vector<Scratch<T>> weights;  // per phase: its taps of the transposed weights
  for (const Phase& ph : phases) {
    const WeightView<T> transposed{wt, Kg * Cg * all_taps, all_taps, Cg * all_taps, ph.tap_index.data()};
    weights.push_back(pack_channel_vector_weights<T>(s.groups, Cg, Kg, int64_t(ph.tap_index.size()), transposed));
  }
  const int64_t chunk =
      images_per_pass(s.batch, (top + s.out_h + bottom) * (left + s.out_w + right) * s.out_channels);
  Scratch<T> buffer;
  for (int64_t n0 = 0; n0 < s.batch; n0 += chunk) {
    const int64_t images = std::min(chunk, s.batch - n0);
    const ImageRows<T> in =
        padded_images(dy, n0, images, s.out_channels, s.out_h, s.out_w, top, left, bottom, right, buffer);
    for (const Phase& ph : phases) {
      const int64_t plane = ph.rows_out * ph.cols_out;
      T* const out = dx.data + n0 * dx.sn + ph.a * dx.sh + ph.a_w * dx.sw;
      const int64_t row_step = s.stride_h * dx.sh, col_step = s.stride_w * dx.sw;
      const auto place = [&](int64_t n, int64_t i, int64_t j) { return out + n * dx.sn + i * row_step + j * col_step; };
      if (ph.tap_index.empty()) {  // no kernel tap reaches this phase: its pixels' gradient is zero
        at::parallel_for(0, images * plane, 1, [&](int64_t p0, int64_t p1) {
          for (int64_t p = p0; p < p1; ++p) {
            std::fill_n(place(p / plane, p % plane / ph.cols_out, p % ph.cols_out), s.in_channels, T(0));
          }
        });
        continue;
      }
      ChannelVectorConv<T> cv{s.groups, Kg, Cg, {}, weights[&ph - phases.data()].get(), nullptr};
      for (size_t t = 0; t < ph.rows.size(); ++t) cv.taps.push_back(ph.rows[t] * in.row + ph.cols[t] * in.pixel);
      run_channel_vector_conv(cv, images * plane, [&](int64_t p, const T** src, T** dst) {
        const int64_t n = p / plane, i = p % plane / ph.cols_out, j = p % ph.cols_out;
        *src = in.data + n * in.image + (i + top) * in.row + (j + left) * in.pixel;
        *dst = place(n, i, j);
      });
    }
  }
}

// ---- the weight gradient of a channels-last 1x1 convolution ------------------------------------------
//
// dW[k][c] = sum over output pixels p of dy[p][k] * x[under p][c], a reduction over the pixels with
// vectors along the output channels. Threads take chunks of output pixels (whose packed copies fit
// half the L2 cache) and sum into their own [c][k] copy of the gradient, added and transposed into dW
// at the end. A chunk is packed first, its grad_output as [block of kChannelBlock channels][pixel][block]
// and its input as [tile of PT channels][pixel][PT], zero past the last channel: read in place, a
// pixel's channels 4 KB apart (1024 input channels) mapped every pixel of a tile's run to one L1 set,
// and 1024 -> 256 on 14x14 at batch 1 took 1.47 times the time of the row kernels. A tile holds PT
// input channels x VT vectors of output channels; per pixel it loads VT grad_output vectors and
// broadcasts PT inputs, then PT * VT FMAs.

// acc[i][v] (rows `ld` apart) += sum over `pixels` pixels of x[p][i] * dy[p][v], x packed [p][PT] and
// dy [p][kChannelBlock].
template <typename T, int PT>
void pointwise_weight_grad_tile(const T* x, const T* dy, int64_t pixels, T* acc_out, int64_t ld) {
  constexpr int VT = kChannelTileVectors;
  constexpr int64_t V = Vec<T>::size();
  Vec<T> acc[PT][VT];
  for (int i = 0; i < PT; ++i) {
    for (int v = 0; v < VT; ++v) acc[i][v] = Vec<T>::loadu(acc_out + i * ld + v * V);
  }
  for (int64_t q = 0; q < pixels; ++q, x += PT, dy += VT * V) {
    Vec<T> d[VT];
    for (int v = 0; v < VT; ++v) d[v] = Vec<T>::loadu(dy + v * V);
    for (int i = 0; i < PT; ++i) {
      const Vec<T> xb(x[i]);
      for (int v = 0; v < VT; ++v) acc[i][v] = at::vec::fmadd(xb, d[v], acc[i][v]);
    }
  }
  for (int i = 0; i < PT; ++i) {
    for (int v = 0; v < VT; ++v) acc[i][v].store(acc_out + i * ld + v * V);
  }
}

// Whether a channels-last convolution's weight gradient takes the reduction above: 1x1, one group,
// output channels that fill a vector and kChannelVectorGradPixels+ output pixels, below which the
// threads' copies of the gradient and the tiles' short runs cost more than the row kernels' gathers.
// New over rows, two threads, time after over before: 1024 -> 256 on 14x14 at batch 1 (196 pixels)
// 1.30, batch 2 1.17, batch 8 0.76; 512 -> 128 on 28x28 at batch 1 (784) 0.73; 256 -> 64 on 56x56 at
// batch 1 0.48, at batch 8 0.35 (FASTDL_CONV_CHANNEL_VECTORS overrides as for the forward).
constexpr int64_t kChannelVectorGradPixels = 512;

template <typename T>
bool channel_vector_grad_weight(const Conv2dShape& s) {
  return s.layout == Layout::nhwc && s.kernel_h == 1 && s.kernel_w == 1 && s.groups == 1 &&
         override_or("FASTDL_CONV_CHANNEL_VECTORS",
                     s.out_channels >= Vec<T>::size() && s.batch * s.out_h * s.out_w >= kChannelVectorGradPixels);
}

constexpr int64_t kReduceChunkBytes = 256 * 1024;  // a chunk's packed grad_output and input: half of L2

template <typename T>
void grad_weight_channels_last_pointwise(const Conv2dBackward& b) {
  constexpr int PT = kChannelTilePixels;
  constexpr int64_t B = kChannelBlock<T>;
  const Conv2dShape& s = b.shape;
  const auto x = strided<const T>(b.input);
  const auto dy = strided<const T>(b.grad_output);
  const int64_t C = s.in_channels, K = s.out_channels, ld = div_up(K, B) * B, cpad = div_up(C, int64_t(PT)) * PT;
  // Output pixels whose input lies inside the image (a padded 1x1's others read padding only), in order.
  const int64_t ow_begin = div_up(s.pad_w, s.stride_w);
  const int64_t ow_end = std::clamp<int64_t>(floor_div(s.in_w - 1 + s.pad_w, s.stride_w) + 1, ow_begin, s.out_w);
  const int64_t oh_begin = div_up(s.pad_h, s.stride_h);
  const int64_t oh_end = std::clamp<int64_t>(floor_div(s.in_h - 1 + s.pad_h, s.stride_h) + 1, oh_begin, s.out_h);
  const int64_t row = ow_end - ow_begin, plane = (oh_end - oh_begin) * row, pixels = s.batch * plane;
  const int64_t chunk = std::clamp<int64_t>(kReduceChunkBytes / ((ld + cpad) * int64_t(sizeof(T))), 1,
                                            std::max<int64_t>(pixels, 1));
  const int64_t chunks = div_up(pixels, chunk), threads = std::clamp<int64_t>(at::get_num_threads(), 1, chunks);
  Scratch<T> partial(std::max<int64_t>(threads, 1) * C * ld);
  std::fill_n(partial.get(), std::max<int64_t>(threads, 1) * C * ld, T(0));
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    Scratch<T> xs(cpad * chunk), ds(ld * chunk);
    for (int64_t t = t0; t < t1; ++t) {
      const Range mine = part_of(chunks, threads, t);
      for (int64_t p0 = mine.begin * chunk; p0 < std::min(pixels, mine.end * chunk); p0 += chunk) {
        const int64_t np = std::min(chunk, pixels - p0);
        for (int64_t q = 0; q < np; ++q) {
          const int64_t p = p0 + q, n = p / plane, oh = oh_begin + p % plane / row, ow = ow_begin + p % row;
          const T* xp = x.data + n * x.sn + (oh * s.stride_h - s.pad_h) * x.sh + (ow * s.stride_w - s.pad_w) * x.sw;
          const T* dp = dy.data + n * dy.sn + oh * dy.sh + ow * dy.sw;
          for (int64_t c0 = 0; c0 < cpad; c0 += PT) {
            T* to = xs.get() + (c0 * np + q * PT);
            std::copy_n(xp + c0, std::clamp<int64_t>(C - c0, 0, PT), to);
            std::fill(to + std::clamp<int64_t>(C - c0, 0, PT), to + PT, T(0));
          }
          for (int64_t k0 = 0; k0 < ld; k0 += B) {
            T* to = ds.get() + (k0 * np + q * B);
            std::copy_n(dp + k0, std::clamp<int64_t>(K - k0, 0, B), to);
            std::fill(to + std::clamp<int64_t>(K - k0, 0, B), to + B, T(0));
          }
        }
        T* const acc = partial.get() + t * C * ld;
        for (int64_t k0 = 0; k0 < ld; k0 += B) {
          for (int64_t c0 = 0; c0 < C; c0 += PT) {
            const T* xt = xs.get() + c0 * np;
            const T* dt = ds.get() + k0 * np;
            if (c0 + PT <= C) {
              pointwise_weight_grad_tile<T, PT>(xt, dt, np, acc + c0 * ld + k0, ld);
            } else {  // the last tile's rows past C go to a scratch row block
              T rest[PT * B] = {};
              for (int64_t i = 0; i < C - c0; ++i) std::copy_n(acc + (c0 + i) * ld + k0, B, rest + i * B);
              pointwise_weight_grad_tile<T, PT>(xt, dt, np, rest, B);
              for (int64_t i = 0; i < C - c0; ++i) std::copy_n(rest + i * B, B, acc + (c0 + i) * ld + k0);
            }
          }
        }
      }
    }
  });
  T* const dw = b.grad_weight.data_ptr<T>();  // (K, C, 1, 1): a block's rows written in runs along c
  at::parallel_for(0, ld / B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t k0 = b0 * B; k0 < std::min(K, b1 * B); k0 += B) {
      for (int64_t c = 0; c < C; ++c) {
        T sums[B] = {};
        for (int64_t t = 0; t < threads; ++t) {
          for (int64_t l = 0; l < B; ++l) sums[l] += partial.get()[(t * C + c) * ld + k0 + l];
        }
        for (int64_t l = 0; l < std::min(B, K - k0); ++l) dw[(k0 + l) * C + c] = sums[l];
      }
    }
  });
}

}  // namespace fastdl::conv2d_cpu
