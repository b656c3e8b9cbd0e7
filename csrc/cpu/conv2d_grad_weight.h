#pragma once
// The CPU convolution's weight and bias gradients (csrc/cpu/conv2d.cpp).
//
// grad_weight[k][c][r][s] sums grad_output[k] times the shifted input plane over all pixels:
// weight_grad_tile does 4 output channels x 3 (channel, tap) pairs over a block of about a thousand
// pixels (input packed as for the forward), then adds its horizontal sums. Threads take blocks of
// pixels into private sums (added at the end) when there are many pixels, else blocks of channels
// (then the input is packed once for all of them, its channels split between the threads). grad_weight
// picks the form: that one, channel vectors for small maps (grad_weight_channel_tiles), or the forward's
// tiles for 1x1 kernels on small maps (grad_weight_pointwise).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <vector>

#include "common/conv2d_ops.h"
#include "cpu/conv2d_blocks.h"

namespace fastdl::conv2d_cpu {

constexpr int64_t kGradPixels = 1024;            // pixels one weight-gradient tile sums over
constexpr int64_t kGradChunkBytes = 128 * 1024;  // grad_output or input rows a weight-gradient pass reuses

// The pixel items of a weight gradient: row groups of one image, or whole images, of about
// kGradPixels pixels. Each item packs the input it reads: a 1x1 kernel's pixels as one row per image
// and channel (pack_pixels), else the rows the forward packs.
struct GradItems {
  bool pointwise;
  InputGeometry geo;
  int64_t rs, rows, images, row_groups, count;

  explicit GradItems(const Conv2dShape& s, int64_t elem_size)
      : pointwise(s.kernel_h == 1 && s.kernel_w == 1), geo(s), rs(geo.window.row_stride()), rows(s.out_h),
        images(1) {
    const int64_t out_plane = s.out_h * s.out_w;
    if (pointwise || out_plane < kGradPixels) {
      images = std::clamp<int64_t>(kGradPixels / out_plane, 1, s.batch);
      // Items of fewer images, enough for every thread to sum its own (grad_weight_tasks), where each
      // thread packing the whole input costs more than a copy of the weight gradient per thread to
      // zero and add. Two threads, batch 8, weight gradient (bench/NOTES.md, convolution entry 18):
      // 256x256 3x3 stride 2 on 28x28 18.7 -> 12.1 ms, 32 -> 64 5x5 on 14x14 1.43 -> 1.16; with input
      // and weights the other way round (512x512 3x3 on 7x7) it measured 13.2 -> 17.3.
      if (!pointwise && 2 * s.batch * s.in_channels * s.in_h * s.in_w > s.weight_numel()) {
        images = std::min(images, std::max<int64_t>(1, s.batch / (2 * at::get_num_threads())));
      }
    } else {
      rows = std::min(div_up(kGradPixels, s.out_w), rows_per_item(s, geo, s.in_channels, elem_size));
    }
    row_groups = div_up(s.out_h, rows);
    count = div_up(s.batch, images) * row_groups;
  }
};

// One item's packed input (reduction channels of groups [g0, g1)): images [n0, n1), output rows
// [oh0, oh1); channel stride cs, image stride image_stride; output pixel (n, oh, ow) reads its first
// tap at buf + at(n, oh, ow), reduction channel 0 of group g0.
template <typename T>
struct PackedItem {
  const T* buf;
  int64_t g0, n0, n1, oh0, oh1, cs, image_stride;
  int64_t row_step;  // between the first taps of consecutive output rows (pointwise: out_w)

  int64_t at(int64_t n, int64_t oh, int64_t ow) const { return (n - n0) * image_stride + (oh - oh0) * row_step + ow; }
};

// A 1x1 convolution with stride 1 and no padding over planes stored whole (NCHW within an image):
// output pixel p of a plane is input pixel p of the same plane.
template <typename T>
bool dense_pointwise(const Conv2dShape& s, const Strided4d<const T>& x) {
  return s.kernel_h == 1 && s.kernel_w == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 && s.pad_w == 0 &&
         x.planes_dense(s.in_w) && x.sc == s.in_h * s.in_w;
}

// Item `item`'s layout for groups [g0, g1), buf unset; an unpadded stride-1 1x1 kernel over dense
// planes reads the input where it is (buf set): every task would otherwise copy all of it
// (ResNet-50's 1024x14x14 at batch 8: 8 tasks x 6.4 MB, as long as the sums).
template <typename T>
PackedItem<T> grad_item_layout(const GradItems& gi, const Strided4d<const T>& x, const Conv2dShape& s, int64_t item,
                               int64_t g0, int64_t g1) {
  PackedItem<T> p;
  p.buf = nullptr;
  p.g0 = g0;
  p.n0 = item / gi.row_groups * gi.images, p.n1 = std::min(s.batch, p.n0 + gi.images);
  p.oh0 = item % gi.row_groups * gi.rows, p.oh1 = std::min(s.out_h, p.oh0 + gi.rows);
  p.row_step = gi.pointwise ? s.out_w : s.stride_h * gi.rs;
  if (dense_pointwise(s, x)) {
    p.cs = x.sc;
    p.image_stride = x.sn;
    p.buf = x.data + p.n0 * x.sn + g0 * s.in_per_group() * x.sc;
    return p;
  }
  p.cs = gi.pointwise ? s.out_h * s.out_w : unaliased(gi.geo.rows(s, p.oh0, p.oh1).rows * gi.rs, sizeof(T));
  p.image_stride = (g1 - g0) * s.in_per_group() * p.cs;
  return p;
}

// Packs reduction channels [c0, c1) (counted from the item's first) of item p into buf, laid out as p.
template <typename T>
void pack_grad_channels(const GradItems& gi, const Strided4d<const T>& x, const Conv2dShape& s, const PackedItem<T>& p,
                        int64_t c0, int64_t c1, T* buf) {
  const int64_t first = p.g0 * s.in_per_group(), out_plane = s.out_h * s.out_w;
  const Window win = gi.geo.rows(s, p.oh0, p.oh1);
  for (int64_t n = p.n0; n < p.n1; ++n) {
    T* dst = buf + (n - p.n0) * p.image_stride + c0 * p.cs;
    if (gi.pointwise) {
      pack_pixels(x, s, first + c0, first + c1, n * out_plane, (n + 1) * out_plane, out_plane, dst);
    } else {
      pack_window(x, s.in_h, s.in_w, n, first + c0, first + c1, win, dst, p.cs);
    }
  }
}

template <typename T>
PackedItem<T> pack_grad_item(const GradItems& gi, const Strided4d<const T>& x, const Conv2dShape& s, int64_t item,
                             int64_t g0, int64_t g1, ThreadBuffers<T>& buffers) {
  PackedItem<T> p = grad_item_layout(gi, x, s, item, g0, g1);
  if (p.buf != nullptr) return p;
  T* buf = buffers.get((p.n1 - p.n0) * p.image_stride + Vec<T>::size());
  pack_grad_channels(gi, x, s, p, 0, (g1 - g0) * s.in_per_group(), buf);
  zero_slack(buf + (p.n1 - p.n0) * p.image_stride);
  p.buf = buf;
  return p;
}

// Whether the threads of a weight gradient split its pixel items (else its output-channel blocks).
inline bool grad_tasks_split_items(int64_t items) { return items >= 2 * at::get_num_threads(); }

// Every item packed once, all groups, the channels split between threads, where the threads split
// the output-channel blocks (grad_tasks_split_items false: few items) and each would otherwise pack
// every item whole for itself (bench/NOTES.md, convolution 26). Otherwise empty: items packed per task.
template <typename T>
class SharedGradItems {
 public:
  SharedGradItems(const GradItems& gi, const Strided4d<const T>& x, const Conv2dShape& s) {
    if (grad_tasks_split_items(gi.count) || at::get_num_threads() == 1 || dense_pointwise(s, x)) return;
    const int64_t channels = s.in_channels, V = Vec<T>::size();
    std::vector<int64_t> offset;
    int64_t total = 0;
    for (int64_t item = 0; item < gi.count; ++item) {
      items_.push_back(grad_item_layout(gi, x, s, item, 0, s.groups));
      offset.push_back(total);
      total += (items_.back().n1 - items_.back().n0) * items_.back().image_stride + V;
    }
    memory_.reset(total);
    for (int64_t item = 0; item < gi.count; ++item) {
      PackedItem<T>& p = items_[item];
      T* buf = memory_.get() + offset[item];
      at::parallel_for(0, channels, 1, [&](int64_t c0, int64_t c1) { pack_grad_channels(gi, x, s, p, c0, c1, buf); });
      zero_slack(buf + (p.n1 - p.n0) * p.image_stride);
      p.buf = buf;
    }
  }

  // Item `item` packed here, or else by the task (for groups [g0, g1)).
  PackedItem<T> get(const GradItems& gi, const Strided4d<const T>& x, const Conv2dShape& s, int64_t item, int64_t g0,
                    int64_t g1, ThreadBuffers<T>& buffers) const {
    return items_.empty() ? pack_grad_item(gi, x, s, item, g0, g1, buffers) : items_[item];
  }

 private:
  Scratch<T> memory_;
  std::vector<PackedItem<T>> items_;
};

// Runs body(task, items, blocks, sums) over the tasks of a weight gradient of `blocks` output-channel
// blocks: threads split the pixel items (each into private sums, added at the end in thread order)
// when there are enough, else the blocks; then writes grad_weight.
template <typename T, typename Body>
void grad_weight_tasks(const Conv2dBackward& b, int64_t items, int64_t blocks, Body&& body) {
  const int64_t numel = b.shape.weight_numel(), threads = at::get_num_threads();
  T* dw = b.grad_weight.data_ptr<T>();
  const bool split_pixels = grad_tasks_split_items(items);
  const int64_t tasks = split_pixels ? threads : block_chunks(1, blocks);
  Scratch<T> partial_memory(split_pixels ? (tasks - 1) * numel : 0);
  T* partial = partial_memory.get();
  // Zeroed in parallel: grad_weight is freshly allocated, and faulting its pages in on one thread took
  // 5 ms of 11 for ResNet-50's 512x512 3x3 weights at batch 1.
  const auto zero = [](T* p, int64_t n) {
    at::parallel_for(0, n, 1 << 16, [&](int64_t e0, int64_t e1) { std::fill(p + e0, p + e1, T(0)); });
  };
  zero(dw, numel);
  if (split_pixels) zero(partial, (tasks - 1) * numel);
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t task = t0; task < t1; ++task) {
      const Range it = split_pixels ? part_of(items, tasks, task) : Range{0, items};
      const Range bl = split_pixels ? Range{0, blocks} : part_of(blocks, tasks, task);
      body(it, bl, split_pixels && task > 0 ? partial + (task - 1) * numel : dw);
    }
  });
  if (split_pixels) {
    at::parallel_for(0, numel, 4096, [&](int64_t e0, int64_t e1) {
      for (int64_t t = 0; t + 1 < tasks; ++t) {
        const T* p = partial + t * numel;
        for (int64_t e = e0; e < e1; ++e) dw[e] += p[e];
      }
    });
  }
}

// The weight gradient of a 1x1 convolution (groups 1) on small maps, as the forward's tiles compute
// it: dW[k][c] = sum over the batch's pixels p of dy[k][p] * x[c][p], vectors along the input channels
// c (the input under each output pixel gathered pixel-major, [p][c]), KT output channels broadcast
// from grad_output packed [block][p][KT], the pixels as the reduction. Rows of 7 or 14 pixels fill
// the pixel-vector form's vectors badly and end every tile in horizontal sums.
// Taken for maps of up to 14x14 pixels and for at most 512 pixels in all. Two threads, ResNet-50's
// 1x1 weight gradients, pixel-vector -> this form, medians in one process (bench/NOTES.md,
// convolution entries 8 and 17): 7x7 at batch 8 0.51x -> 1.0x torch; 14x14 at batch 8 (1024 -> 512)
// 0.76x -> 0.95x, at batch 32 0.71x -> 0.97x, once the input's gather was transposed in registers
// (gather_pixel_major; the scalar gather had made it slower: 0.60x -> 0.45x). On 28x28 the
// pixel-vector form stays ahead (512 -> 128 at batch 8 1.03x vs 0.87x; 128 -> 512 1.07x vs 0.77x).
constexpr int64_t kPointwiseGradColumns = int64_t(1) << 24;  // elements of the gathered input
inline bool pointwise_grad_weight(const Conv2dShape& s) {
  const int64_t plane = s.out_h * s.out_w, pixels = s.batch * plane;
  return s.kernel_h == 1 && s.kernel_w == 1 && s.groups == 1 && (plane <= 196 || pixels <= 512) &&
         pixels * s.in_channels <= kPointwiseGradColumns;
}

// The input under a 1x1 convolution's output pixels, pixel-major in tiles of TW channels: [channel
// tile][n * plane + p][TW] (plane: the output's), zero past the last channel and in the padding. V
// channels x 8 pixels at a time transposed in registers, straight from the input's rows where its
// planes are dense (dense_pointwise), else from the block's pixels gathered first (strided or padded).
template <typename T, int64_t TW>
void gather_pixel_major(const Strided4d<const T>& x, const Conv2dShape& s, T* columns) {
  constexpr int64_t V = Vec<T>::size();
  const int64_t C = s.in_channels, plane = s.out_h * s.out_w, P = s.batch * plane;
  const int64_t groups = div_up(C, TW) * TW / V;  // of V channels per image
  const bool dense = dense_pointwise(s, x);
  at::parallel_for(0, s.batch * groups, 1, [&](int64_t i0, int64_t i1) {
    T block[V * 8];
    int64_t offset[8];  // each pixel's input offset within a channel, or -1 in the padding
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / groups, c0 = i % groups * V, lanes = std::clamp<int64_t>(C - c0, 0, V);
      T* dst = columns + ((c0 / TW) * P + n * plane) * TW + c0 % TW;
      const T* image = x.data + n * x.sn;
      for (int64_t p = 0; p < plane; p += 8) {
        const int64_t count = std::min<int64_t>(8, plane - p);
        const T* src = block;
        int64_t ld = 8;
        if (dense && lanes == V && count == 8) {
          src = image + c0 * x.sc + p;
          ld = x.sc;
        } else {
          for (int64_t j = 0, oh = p / s.out_w, ow = p % s.out_w; j < 8; ++j) {
            const int64_t ih = oh * s.stride_h - s.pad_h, iw = ow * s.stride_w - s.pad_w;
            const bool inside = j < count && ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w;
            offset[j] = inside ? ih * x.sh + iw * x.sw : -1;
            if (++ow == s.out_w) ow = 0, ++oh;
          }
          for (int64_t l = 0; l < V; ++l) {
            for (int j = 0; j < 8; ++j) block[l * 8 + j] = l < lanes && offset[j] >= 0 ? image[(c0 + l) * x.sc + offset[j]] : T(0);
          }
        }
        if (count == 8) {
          at::vec::transpose_mxn<T, int(V), 8>(src, ld, dst + p * TW, TW);
        } else {
          for (int64_t j = 0; j < count; ++j) {
            for (int64_t l = 0; l < V; ++l) dst[(p + j) * TW + l] = src[l * ld + j];
          }
        }
      }
    }
  });
}

// dst[p][j] = src[j * ld + p] for KT planes of `plane` elements, ld apart: the scalar gather through
// Strided4d::at per element took 15% of perf's samples of ResNet-50's 256 -> 1024 1x1 weight gradient
// on 14x14 at batch 8 (bench/NOTES.md, convolution 27).
template <typename T, int KT>
void interleave_planes(const T* __restrict src, int64_t ld, int64_t plane, T* __restrict dst) {
  for (int64_t p = 0; p < plane; ++p) {
    for (int j = 0; j < KT; ++j) dst[p * KT + j] = src[j * ld + p];
  }
}

template <typename T, int KT>
void grad_weight_pointwise(const Conv2dBackward& b) {
  constexpr int64_t V = Vec<T>::size();
  constexpr int VT = kTileVectors<KT>;
  constexpr int64_t TW = VT * V;  // input channels per tile
  const Conv2dShape& s = b.shape;
  const int64_t C = s.in_channels, K = s.out_channels, plane = s.out_h * s.out_w, P = s.batch * plane;
  const int64_t nb = div_up(K, KT), ctiles = div_up(C, TW);
  const auto x = strided<const T>(b.input);
  const auto dy = strided<const T>(b.grad_output);
  // The input tile-major, [channel tile][pixel][TW] (zero past the last channel): a tile's steps over
  // the pixels read one contiguous run.
  Scratch<T> columns(ctiles * P * TW + V), packed(nb * P * KT);
  gather_pixel_major<T, TW>(x, s, columns.get());
  zero_slack(columns.get() + ctiles * P * TW);
  // grad_output packed [block][pixel][KT]: where a block's KT planes are dense, interleaved plane by
  // plane (interleave_planes), else element by element (zero past the last channel).
  const bool dense_dy = dy.planes_dense(s.out_w);
  at::parallel_for(0, nb, 1, [&](int64_t kb0, int64_t kb1) {
    for (int64_t kb = kb0; kb < kb1; ++kb) {
      T* dst = packed.get() + kb * P * KT;
      for (int64_t n = 0; n < s.batch; ++n) {
        if (dense_dy && (kb + 1) * KT <= K) {
          interleave_planes<T, KT>(dy.at(n, kb * KT, 0, 0), dy.sc, plane, dst);
          dst += plane * KT;
          continue;
        }
        for (int64_t oh = 0; oh < s.out_h; ++oh) {
          for (int64_t ow = 0; ow < s.out_w; ++ow, dst += KT) {
            for (int j = 0; j < KT; ++j) dst[j] = kb * KT + j < K ? *dy.at(n, kb * KT + j, oh, ow) : T(0);
          }
        }
      }
    }
  });
  const TiledConv<T> tc{P, K, nb, 1, packed.get(), nullptr, C, 1, pointwise_channel_block<T, KT>(P)};
  T* dw = b.grad_weight.data_ptr<T>();
  const int64_t zero_tap = 0, vectors = div_up(C, V), unit = 3 * VT, units = div_up(vectors, unit);
  const int64_t kchunks = block_chunks(units, nb, kItemsPerThread);
  const auto unit_vectors = [&](int64_t u) { return std::min(vectors, (u + 1) * unit) - u * unit; };
  for_tile_items(units, nb, kchunks, unit_vectors, [&](int64_t u, Range bl) {
    const int64_t c0 = u * unit * V;
    compute_blocks<T, KT>(tc, columns.get() + (c0 / TW) * P * TW, TW, &zero_tap, 0,
                          unit_vectors(u) * V * int64_t(sizeof(T)), dw, bl.begin, bl.end, unit_vectors(u),
                          [&](int64_t q) {
                            const int64_t c = c0 + q * V;
                            return VectorPos{q / VT * P * TW + q % VT * V, c, std::min(V, C - c)};
                          });
  });
}

// Pixel-vector form: weight_grad_tile over rows of pixels (large maps).
template <typename T, int KT>
void grad_weight_tiles(const Conv2dBackward& b) {
  constexpr int J = 3;  // (channel, tap) pairs per tile
  constexpr int64_t V = Vec<T>::size();
  const Conv2dShape& s = b.shape;
  const at::Tensor dy_dense = b.grad_output.contiguous();  // rows of pixels per channel
  const T* dy = dy_dense.const_data_ptr<T>();
  const auto x = strided<const T>(b.input);
  const int64_t Cg = s.in_per_group(), Kg = s.out_per_group(), nb = div_up(Kg, KT), blocks = s.groups * nb;
  const int64_t pairs = Cg * s.taps(), out_plane = s.out_h * s.out_w;
  const GradItems gi(s, sizeof(T));
  const SharedGradItems<T> shared(gi, x, s);
  ThreadBuffers<T> buffers;
  grad_weight_tasks<T>(b, gi.count, blocks, [&](Range it, Range bl, T* sums) {
    const int64_t g0 = bl.begin / nb, g1 = (bl.end - 1) / nb + 1;
    std::vector<const T*> dy_steps, x_steps;
    std::vector<int64_t> pair_offset(pairs);
    for (int64_t item = it.begin; item < it.end; ++item) {
      const PackedItem<T> pk = shared.get(gi, x, s, item, g0, g1, buffers);
      for (int64_t pair = 0; pair < pairs; ++pair) pair_offset[pair] = pair / s.taps() * pk.cs + gi.geo.taps[pair % s.taps()];
      // Steps: each row's full vectors, then each row's partial last vector.
      dy_steps.clear();
      x_steps.clear();
      const int64_t width = gi.pointwise ? out_plane : s.out_w, row_end = gi.pointwise ? pk.oh0 + 1 : pk.oh1;
      const int64_t full = width / V * V, rest = width - full;
      for (int pass = 0; pass < (rest > 0 ? 2 : 1); ++pass) {
        for (int64_t n = pk.n0; n < pk.n1; ++n) {
          for (int64_t oh = pk.oh0; oh < row_end; ++oh) {
            const T* dy_row = dy + n * s.out_channels * out_plane + oh * s.out_w;
            const T* x_row = pk.buf + pk.at(n, oh, 0);
            for (int64_t p = pass == 0 ? 0 : full; p < (pass == 0 ? full : width); p += V) {
              dy_steps.push_back(dy_row + p);
              x_steps.push_back(x_row + p);
            }
          }
        }
      }
      const GradSteps<T> steps{dy_steps.data(), x_steps.data(), (pk.n1 - pk.n0) * (row_end - pk.oh0) * (full / V),
                               int64_t(dy_steps.size()), rest};
      // Blocks of output channels x blocks of (channel, tap) pairs whose grad_output and input
      // rows each fit in kGradChunkBytes, so that every tile reads both from the L2 cache.
      const int64_t dy_block_bytes = KT * steps.count * V * int64_t(sizeof(T));
      const int64_t x_channel_bytes = (pk.n1 - pk.n0) * pk.cs * int64_t(sizeof(T));
      const int64_t kb_step = std::max<int64_t>(1, kGradChunkBytes / dy_block_bytes);
      const int64_t q_step = div_up(std::max<int64_t>(1, kGradChunkBytes / x_channel_bytes) * s.taps(), J) * J;
      for (int64_t kc = bl.begin; kc < bl.end; kc += kb_step) {
        for (int64_t qc = 0; qc < pairs; qc += q_step) {
          for (int64_t kb = kc; kb < std::min(bl.end, kc + kb_step); ++kb) {
            const int64_t g = kb / nb, k0 = (kb % nb) * KT, kvalid = std::min<int64_t>(KT, Kg - k0);
            int64_t dy_offset[KT];
            for (int j = 0; j < KT; ++j) dy_offset[j] = (g * Kg + k0 + std::min<int64_t>(j, kvalid - 1)) * out_plane;
            for (int64_t q0 = qc; q0 < std::min(pairs, qc + q_step); q0 += J) {
              int64_t x_offset[J];
              for (int q = 0; q < J; ++q) x_offset[q] = (g - pk.g0) * Cg * pk.cs + pair_offset[std::min(q0 + q, pairs - 1)];
              weight_grad_tile<T, KT, J>(steps, dy_offset, x_offset, sums + (g * Kg + k0) * pairs + q0, pairs,
                                         kvalid, std::min<int64_t>(J, pairs - q0));
            }
          }
        }
      }
    }
  });
}

// Channel-vector form: weight_grad_channel_tile over the item's pixels in any order (small maps,
// where a row fills its pixel vectors badly), VT vectors of output channels per block.
template <typename T>
void grad_weight_channel_tiles(const Conv2dBackward& b) {
  constexpr int J = 4, VT = 3;
  constexpr int64_t KV = VT * Vec<T>::size();
  const Conv2dShape& s = b.shape;
  const auto x = strided<const T>(b.input);
  const auto dy = strided<const T>(b.grad_output);
  const int64_t Cg = s.in_per_group(), Kg = s.out_per_group(), nb = div_up(Kg, KV), blocks = s.groups * nb;
  const int64_t pairs = Cg * s.taps();
  const GradItems gi(s, sizeof(T));
  const SharedGradItems<T> shared(gi, x, s);
  ThreadBuffers<T> buffers, dy_buffers;
  grad_weight_tasks<T>(b, gi.count, blocks, [&](Range it, Range bl, T* sums) {
    const int64_t g0 = bl.begin / nb, g1 = (bl.end - 1) / nb + 1;
    std::vector<int64_t> pair_offset(pairs), pos;
    std::vector<std::array<int64_t, 3>> pixels;  // (n, oh, ow)
    for (int64_t item = it.begin; item < it.end; ++item) {
      const PackedItem<T> pk = shared.get(gi, x, s, item, g0, g1, buffers);
      for (int64_t pair = 0; pair < pairs; ++pair) pair_offset[pair] = pair / s.taps() * pk.cs + gi.geo.taps[pair % s.taps()];
      pixels.clear();
      pos.clear();
      for (int64_t n = pk.n0; n < pk.n1; ++n) {
        for (int64_t oh = pk.oh0; oh < pk.oh1; ++oh) {
          for (int64_t ow = 0; ow < s.out_w; ++ow) {
            pixels.push_back({n, oh, ow});
            pos.push_back(pk.at(n, oh, ow));
          }
        }
      }
      // Chunks of blocks whose packed grad_output fits 2 * kGradChunkBytes, and of pairs whose input
      // rows fit kGradChunkBytes: each tile reads both from the L2 cache.
      const int64_t count = int64_t(pixels.size()), block_bytes = count * KV * int64_t(sizeof(T));
      const int64_t kb_step = std::max<int64_t>(1, 2 * kGradChunkBytes / block_bytes);
      const int64_t x_channel_bytes = (pk.n1 - pk.n0) * pk.cs * int64_t(sizeof(T));
      const int64_t q_step = div_up(std::max<int64_t>(1, kGradChunkBytes / x_channel_bytes) * s.taps(), J) * J;
      T* dyb = dy_buffers.get(std::min(kb_step, bl.end - bl.begin) * count * KV);
      for (int64_t kc = bl.begin; kc < bl.end; kc += kb_step) {
        const int64_t kc_end = std::min(bl.end, kc + kb_step);
        for (int64_t kb = kc; kb < kc_end; ++kb) {  // the blocks' grad_output, pixel-major
          const int64_t g = kb / nb, k0 = (kb % nb) * KV, kvalid = std::min<int64_t>(KV, Kg - k0);
          for (int64_t i = 0; i < count; ++i) {
            const auto& [n, oh, ow] = pixels[i];
            const T* src = dy.at(n, g * Kg + k0, oh, ow);
            T* dst = dyb + ((kb - kc) * count + i) * KV;
            for (int64_t k = 0; k < kvalid; ++k) dst[k] = src[k * dy.sc];
            std::fill(dst + kvalid, dst + KV, T(0));
          }
        }
        for (int64_t qc = 0; qc < pairs; qc += q_step) {
          for (int64_t kb = kc; kb < kc_end; ++kb) {
            const int64_t g = kb / nb, k0 = (kb % nb) * KV, kvalid = std::min<int64_t>(KV, Kg - k0);
            for (int64_t q0 = qc; q0 < std::min(pairs, qc + q_step); q0 += J) {
              int64_t x_offset[J];
              for (int q = 0; q < J; ++q) x_offset[q] = (g - pk.g0) * Cg * pk.cs + pair_offset[std::min(q0 + q, pairs - 1)];
              weight_grad_channel_tile<T, J, VT>(dyb + (kb - kc) * count * KV, pk.buf, pos.data(), count, x_offset,
                                                 sums + (g * Kg + k0) * pairs + q0, pairs, kvalid,
                                                 std::min<int64_t>(J, pairs - q0));
            }
          }
        }
      }
    }
  });
}

template <typename T>
void grad_bias(const Conv2dBackward& b) {
  constexpr int64_t V = Vec<T>::size();
  const Conv2dShape& s = b.shape;
  const auto dy = strided<const T>(b.grad_output);
  T* db = b.grad_bias.data_ptr<T>();
  const int64_t K = s.out_channels, plane = s.out_h * s.out_w;
  if (s.layout == Layout::nchw) {
    at::parallel_for(0, K, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        double total = 0;
        for (int64_t n = 0; n < s.batch; ++n) {
          const T* p = dy.at(n, k, 0, 0);
          Vec<T> acc(T(0));
          int64_t i = 0;
          for (; i + V <= plane; i += V) acc = acc + Vec<T>::loadu(p + i);
          total += double(horizontal_sum(acc + load_partial(p + i, plane - i)));
        }
        db[k] = T(total);
      }
    });
    return;
  }
  // Channels-last: rows of K values; threads take channel slices of every row.
  at::parallel_for(0, div_up(K, V), 1, [&](int64_t v0, int64_t v1) {
    for (int64_t k = v0 * V; k < std::min(K, v1 * V); k += V) {
      const int64_t lanes = std::min(V, K - k);
      std::vector<double> total(V, 0.0);
      for (int64_t n = 0; n < s.batch; ++n) {
        Vec<T> acc(T(0));
        for (int64_t p = 0; p < plane; ++p) acc = acc + load_partial(dy.data + n * dy.sn + p * K + k, lanes);
        T lane_sums[V];
        acc.store(lane_sums);
        for (int64_t l = 0; l < V; ++l) total[l] += double(lane_sums[l]);
      }
      for (int64_t l = 0; l < lanes; ++l) db[k + l] = T(total[l]);
    }
  });
}

// Whether the weight gradient takes the channel-vector form (bench/NOTES.md, convolution entry 5):
// measured faster for every kernel larger than 1x1 on rows of up to 112 pixels, slower on 224-pixel
// rows, the same for 1x1 kernels. It needs output channels per group to fill its vectors.
inline bool channel_vectors_for_grad_weight(const Conv2dShape& s, int64_t lanes) {
  const bool pointwise = s.kernel_h == 1 && s.kernel_w == 1;
  return !pointwise && s.out_w < 16 * lanes && s.out_per_group() >= 2 * lanes;
}

// grad_weight in the form measured fastest for the shape.
template <typename T>
void grad_weight(const Conv2dBackward& b) {
  if (pointwise_grad_weight(b.shape)) {
    with_tile_channels(b.shape.out_channels, [&](auto kt) { grad_weight_pointwise<T, decltype(kt)::value>(b); });
  } else if (channel_vectors_for_grad_weight(b.shape, Vec<T>::size())) {
    grad_weight_channel_tiles<T>(b);
  } else {
    with_tile_channels(b.shape.out_per_group(), [&](auto kt) { grad_weight_tiles<T, decltype(kt)::value>(b); });
  }
}

}  // namespace fastdl::conv2d_cpu
