// CPU kernels of 2-D convolution (float32, float64): forward, grad_input, grad_weight, grad_bias.
//
// Forward. Work items are (image, a group of output rows, a range of output-channel blocks). An item
// copies the input rows its outputs read into a per-thread buffer, zero-padded and, for stride s > 1,
// split into s column phases so that neighbouring outputs read neighbouring elements for every
// kernel tap; then conv_tile (conv2d_tiles.h) computes 4 output channels x 3 vectors of pixels at a
// time from weights packed once per call. Reduction channels go in blocks sized for the L1 cache,
// the partial sums staying in the output between blocks. A 1x1 convolution (any stride) takes its
// output pixels in flat order instead of rows: tiles of them are gathered tile-major (pack_pixels,
// one memcpy per channel where the pixels are contiguous), so that a tile's inputs over a channel
// block are one contiguous run. Of the item's inputs and its weights, the smaller stays in cache
// and the other streams (compute_blocks picks the loop order).
//
// grad_input is a convolution of the zero-padded grad_output with the transposed weights, done with
// the same tiles once per output phase (ih mod sh, iw mod sw): in phase (a, b) only the kernel taps
// with (a + ph - r*dh) and (b + pw - s*dw) divisible by the stride contribute, at a constant offset.
//
// grad_weight[k][c][r][s] sums grad_output[k] times the shifted input plane over all pixels:
// weight_grad_tile does 4 output channels x 3 (channel, tap) pairs over a block of about a thousand
// pixels (input packed as for the forward), then adds its horizontal sums. Threads take blocks of
// pixels into private sums (added at the end) when there are many pixels, else blocks of channels.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <vector>

#include "common/conv2d_ops.h"
#include "cpu/conv2d_tiles.h"
#include "cpu/work_split.h"

namespace fastdl {
namespace {

constexpr int64_t kItemBufferBytes = 384 * 1024;  // packed rows of one work item: about the L2 cache
constexpr int64_t kTileInputBytes = 24 * 1024;    // one tile's input rows over a channel block: L1
constexpr int64_t kGradPixels = 1024;             // pixels one weight-gradient tile sums over
constexpr int64_t kGradChunkBytes = 128 * 1024;   // grad_output or input rows a weight-gradient pass reuses

// ---- packing ----------------------------------------------------------------------------------------

// A window of image rows as packed rows: dst[c][i][phase * phase_width + j] is
// src[c][row0 + i][col0 + phase + step * j], zero outside the image.
struct Window {
  int64_t row0, rows, col0, step, phases, phase_width;
  int64_t row_stride() const { return phases * phase_width; }
};

template <typename T>
void pack_window(const Strided4d<const T>& src, int64_t H, int64_t W, int64_t n, int64_t c0, int64_t c1,
                 const Window& win, T* buf, int64_t cs) {
  const int64_t rs = win.row_stride();
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t i = 0; i < win.rows; ++i) {
      T* dst = buf + (c - c0) * cs + i * rs;
      const int64_t h = win.row0 + i;
      if (h < 0 || h >= H) {
        std::fill(dst, dst + rs, T(0));
        continue;
      }
      const T* row = src.at(n, c, h, 0);
      for (int64_t ph = 0; ph < win.phases; ++ph, dst += win.phase_width) {
        // Columns col0 + ph + step*j inside [0, W) are j in [lo, hi).
        const int64_t first = win.col0 + ph;
        const int64_t lo = std::clamp<int64_t>(ceil_div<int64_t>(-first, win.step), 0, win.phase_width);
        const int64_t hi = std::clamp<int64_t>(floor_div<int64_t>(W - 1 - first, win.step) + 1, lo, win.phase_width);
        std::fill(dst, dst + lo, T(0));
        if (win.step == 1 && src.sw == 1) {
          std::memcpy(dst + lo, row + first + lo, (hi - lo) * sizeof(T));
        } else {
          for (int64_t j = lo; j < hi; ++j) dst[j] = row[(first + win.step * j) * src.sw];
        }
        std::fill(dst + hi, dst + win.phase_width, T(0));
      }
    }
  }
  std::fill(buf + (c1 - c0) * cs, buf + (c1 - c0) * cs + Vec<T>::size(), T(0));  // the over-read slack
}

// The input pixels of 1x1 kernels, tile-major: buf[tile][c - c0][l] is the input under output
// pixel p0 + tile * tile_size + l (pixels in flat order oh * OW + ow), zero past p1 or in the padding.
// A tile's values over all channels are then one contiguous run.
template <typename T>
void pack_pixels(const Strided4d<const T>& x, const Conv2dShape& s, int64_t n, int64_t c0, int64_t c1, int64_t p0,
                 int64_t p1, int64_t tile_size, T* buf) {
  std::vector<int64_t> offset(tile_size);
  for (int64_t t0 = p0; t0 < p1; t0 += tile_size) {
    T* dst = buf + (t0 - p0) / tile_size * (c1 - c0) * tile_size;
    bool all_inside = true, contiguous = true;
    for (int64_t l = 0; l < tile_size; ++l) {
      const int64_t p = t0 + l, ih = p / s.out_w * s.stride_h - s.pad_h, iw = p % s.out_w * s.stride_w - s.pad_w;
      const bool inside = p < p1 && ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w;
      offset[l] = inside ? n * x.sn + ih * x.sh + iw * x.sw : -1;
      all_inside &= inside;
      contiguous &= inside && offset[l] == offset[0] + l;  // -1 (padding) can follow on from a real offset
    }
    const int64_t* off = offset.data();
    for (int64_t c = c0; c < c1; ++c, dst += tile_size) {
      const T* src = x.data + c * x.sc;
      if (contiguous) {  // a run of one input row: stride 1, no padding, N,C,H,W
        std::memcpy(dst, src + off[0], tile_size * sizeof(T));
      } else if (all_inside) {
        for (int64_t l = 0; l < tile_size; ++l) dst[l] = src[off[l]];
      } else {
        for (int64_t l = 0; l < tile_size; ++l) dst[l] = off[l] >= 0 ? src[off[l]] : T(0);
      }
    }
  }
}

// The forward's input window: padded columns split into stride_w phases, so that output column ow
// and kernel column s read phase (s*dw) % sw at ow + (s*dw) / sw; taps[r*S + s] is that offset plus
// r*dh rows.
struct InputGeometry {
  Window window;  // rows and row0 are per item
  std::vector<int64_t> taps;

  explicit InputGeometry(const Conv2dShape& s) {
    const int64_t phases = s.stride_w;
    window = {0, 0, -s.pad_w, phases, phases, div_up(s.in_w + 2 * s.pad_w, phases)};
    for (int64_t r = 0; r < s.kernel_h; ++r) {
      for (int64_t c = 0; c < s.kernel_w; ++c) {
        const int64_t col = c * s.dilation_w;
        taps.push_back(r * s.dilation_h * window.row_stride() + (col % phases) * window.phase_width + col / phases);
      }
    }
  }
  // The window of output rows [oh0, oh1).
  Window rows(const Conv2dShape& s, int64_t oh0, int64_t oh1) const {
    Window w = window;
    w.row0 = oh0 * s.stride_h - s.pad_h;
    w.rows = (oh1 - 1 - oh0) * s.stride_h + (s.kernel_h - 1) * s.dilation_h + 1;
    return w;
  }
};

// Output rows per item such that the packed input of `channels` channels stays within the budget.
int64_t rows_per_item(const Conv2dShape& s, const InputGeometry& geo, int64_t channels, int64_t elem_size) {
  const int64_t row_bytes = channels * geo.window.row_stride() * elem_size;
  const int64_t input_rows = std::max<int64_t>(1, kItemBufferBytes / std::max<int64_t>(row_bytes, 1));
  const int64_t extra = (s.kernel_h - 1) * s.dilation_h + 1 - s.stride_h;  // input rows beyond sh per output row
  return std::clamp<int64_t>((input_rows - extra) / s.stride_h, 1, s.out_h);
}

// Weights as the tiles read them: [group][block][reduction channel][tap][KT], block b holding KT
// consecutive output channels of its group (zero past the last). Forward: output channels k,
// reduction channels c, taps (r, s). Input gradient: output channels c, reduction channels k, the
// given taps. Packed in parallel, by blocks: at batch 1 this copy is as long as the convolution
// itself would be on one thread.
template <typename T>
std::unique_ptr<T[]> pack_weights(const T* w, const Conv2dShape& s, int64_t KT, bool transposed,
                                  const std::vector<int64_t>& tap_index) {
  const int64_t Cg = s.in_per_group(), Kg = s.out_per_group(), taps = s.taps();
  const int64_t outs = transposed ? Cg : Kg, reds = transposed ? Kg : Cg, nt = int64_t(tap_index.size());
  const int64_t blocks = div_up(outs, KT), block_size = reds * nt * KT;
  bool all_taps = nt == taps;
  for (int64_t t = 0; t < nt; ++t) all_taps &= tap_index[t] == t;
  std::unique_ptr<T[]> packed(new T[s.groups * blocks * block_size]);
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(block_size, 1));
  at::parallel_for(0, s.groups * blocks, grain, [&](int64_t gb0, int64_t gb1) {
    for (int64_t gb = gb0; gb < gb1; ++gb) {
      const int64_t g = gb / blocks, o0 = gb % blocks * KT;
      T* block = packed.get() + gb * block_size;
      for (int64_t j = 0; j < KT; ++j) {
        T* dst = block + j;  // (r, t) at dst[(r * nt + t) * KT]
        if (o0 + j >= outs) {
          for (int64_t i = 0; i < reds * nt; ++i) dst[i * KT] = T(0);
        } else if (!transposed && all_taps) {  // the forward's: one contiguous run of the source
          const T* src = w + (g * Kg + o0 + j) * Cg * taps;
          for (int64_t i = 0; i < reds * nt; ++i) dst[i * KT] = src[i];
        } else {
          for (int64_t r = 0; r < reds; ++r, dst += nt * KT) {
            const int64_t k = transposed ? r : o0 + j, c = transposed ? o0 + j : r;
            const T* src = w + ((g * Kg + k) * Cg + c) * taps;
            for (int64_t t = 0; t < nt; ++t) dst[t * KT] = src[tap_index[t]];
          }
        }
      }
    }
  });
  return packed;
}

// ---- forward and input gradient: tiles over packed rows ---------------------------------------------

// A convolution as the tiles compute it (forward, or one phase of the input gradient).
template <typename T>
struct TiledConv {
  int64_t reds, outs, blocks;  // per group: reduction channels, output channels, blocks of KT outputs
  int64_t ntaps;
  const T* weights;            // pack_weights
  const T* bias;               // [group][block][KT], or null
  int64_t out_channel_stride, out_pixel_stride;
  int64_t channel_block;       // reduction channels per pass over the tiles
};

// Where a vector of pixels reads (from its buffer's channel 0) and writes (from output channel 0).
struct VectorPos {
  int64_t in, out, count;
};

template <int KT>
constexpr int kTileVectors = KT == 4 ? 3 : 4;  // 12 or fewer accumulators

template <typename T, int KT, int VT>
void tile(const T* const* in, T* const* out, const int64_t* count, const TileGeometry& g, const T* w,
          TileInit init, const T* bias, int64_t kvalid, int vectors) {
  if constexpr (VT > 1) {
    if (vectors < VT) return tile<T, KT, VT - 1>(in, out, count, g, w, init, bias, kvalid, vectors);
  }
  conv_tile<T, KT, VT>(in, out, count, g, w, init, bias, kvalid);
}

// Output blocks [b0, b1) (numbered across groups) of `vectors` pixel vectors. buf holds the reduction
// channels of groups first_group.. at channel stride cs, each `in_channel_bytes` of the item's input;
// vector_at(q) places vector q. Of the item's inputs and the weights, the smaller is kept in cache
// and the other streamed once per channel block: tiles inside the blocks loop when the inputs are
// smaller (small images), blocks inside the tiles loop otherwise.
template <typename T, int KT, typename VectorAt>
void compute_blocks(const TiledConv<T>& tc, const T* buf, int64_t cs, const int64_t* taps, int64_t first_group,
                    int64_t in_channel_bytes, T* out, int64_t b0, int64_t b1, int64_t vectors,
                    VectorAt&& vector_at) {
  constexpr int VT = kTileVectors<KT>;
  std::vector<int64_t> offsets(tc.channel_block * tc.ntaps);
  for (int64_t c = 0; c < tc.channel_block; ++c) {
    for (int64_t t = 0; t < tc.ntaps; ++t) offsets[c * tc.ntaps + t] = c * cs + taps[t];
  }
  std::vector<VectorPos> pos(vectors);
  for (int64_t q = 0; q < vectors; ++q) pos[q] = vector_at(q);
  const bool blocks_outside = in_channel_bytes < (b1 - b0) * KT * tc.ntaps * int64_t(sizeof(T));
  for (int64_t g = b0 / tc.blocks; g <= (b1 - 1) / tc.blocks; ++g) {
    const int64_t kb0 = std::max(b0, g * tc.blocks), kb1 = std::min(b1, (g + 1) * tc.blocks);
    const T* group_in = buf + (g - first_group) * tc.reds * cs;
    for (int64_t c0 = 0; c0 < tc.reds; c0 += tc.channel_block) {
      const TileGeometry geo{std::min(tc.channel_block, tc.reds - c0) * tc.ntaps, offsets.data(),
                             tc.out_channel_stride, tc.out_pixel_stride};
      const TileInit init = c0 > 0 ? TileInit::accumulate : tc.bias ? TileInit::bias : TileInit::zero;
      const auto run = [&](int64_t q, int64_t kb) {
        const int n = int(std::min<int64_t>(VT, vectors - q));
        const int64_t k0 = (kb - g * tc.blocks) * KT, out_shift = (g * tc.outs + k0) * tc.out_channel_stride;
        const T* in[VT];
        T* outs[VT];
        int64_t count[VT];
        for (int v = 0; v < n; ++v) {
          in[v] = group_in + c0 * cs + pos[q + v].in;
          outs[v] = out + pos[q + v].out + out_shift;
          count[v] = pos[q + v].count;
        }
        const T* w = tc.weights + (kb * tc.reds + c0) * tc.ntaps * KT;
        tile<T, KT, VT>(in, outs, count, geo, w, init, tc.bias ? tc.bias + kb * KT : nullptr,
                        std::min<int64_t>(KT, tc.outs - k0), n);
      };
      if (blocks_outside) {
        for (int64_t kb = kb0; kb < kb1; ++kb) {
          for (int64_t q = 0; q < vectors; q += VT) run(q, kb);
        }
      } else {
        for (int64_t q = 0; q < vectors; q += VT) {
          for (int64_t kb = kb0; kb < kb1; ++kb) run(q, kb);
        }
      }
    }
  }
}

// Reduction channels per pass: a tile's inputs over them fit kTileInputBytes.
template <typename T, int KT>
int64_t channel_block(int64_t kernel_rows, int64_t reds) {
  const int64_t per_channel = kernel_rows * kTileVectors<KT> * (Vec<T>::size() * int64_t(sizeof(T)) + 64);
  return std::clamp<int64_t>(kTileInputBytes / per_channel, 8, std::max<int64_t>(reds, 1));
}

// Whether kernel tap t of an axis reads the image, not only its padding, for some output: the first
// input it reads at or after 0 (stepping by the stride) lies before the end of both.
bool tap_reaches_image(int64_t t, int64_t dilation, int64_t pad, int64_t stride, int64_t outs, int64_t size) {
  const int64_t first = t * dilation - pad, last = std::min(first + (outs - 1) * stride, size - 1);
  return (first >= 0 ? first : first + ceil_div<int64_t>(-first, stride) * stride) <= last;
}

// The forward's kernel taps (r * S + s) that read the image for some output pixel. The others multiply
// padding only: 8 of 9 taps of a 3x3 convolution on a 1x1 map (ResNet's last stage at 32x32 input).
std::vector<int64_t> taps_reaching_image(const Conv2dShape& s) {
  std::vector<int64_t> taps;
  for (int64_t r = 0; r < s.kernel_h; ++r) {
    if (!tap_reaches_image(r, s.dilation_h, s.pad_h, s.stride_h, s.out_h, s.in_h)) continue;
    for (int64_t c = 0; c < s.kernel_w; ++c) {
      if (tap_reaches_image(c, s.dilation_w, s.pad_w, s.stride_w, s.out_w, s.in_w)) taps.push_back(r * s.kernel_w + c);
    }
  }
  return taps;
}

template <typename T, int KT>
void forward_tiles(const Conv2dForward& f) {
  constexpr int64_t V = Vec<T>::size();
  const Conv2dShape& s = f.shape;
  const auto x = strided<const T>(f.input);
  const auto y = strided<T>(f.output);
  const int64_t Cg = s.in_per_group(), Kg = s.out_per_group(), nb = div_up(Kg, KT), blocks = s.groups * nb;
  const bool pointwise = s.kernel_h == 1 && s.kernel_w == 1;  // its padding is packed as zeros instead
  const std::vector<int64_t> taps = pointwise ? std::vector<int64_t>{0} : taps_reaching_image(s);
  const std::unique_ptr<T[]> weights = pack_weights(f.weight.const_data_ptr<T>(), s, KT, false, taps);
  std::vector<T> bias;
  if (f.bias.defined()) {
    bias.assign(blocks * KT, T(0));
    const T* b = f.bias.const_data_ptr<T>();
    for (int64_t g = 0; g < s.groups; ++g) {
      for (int64_t k = 0; k < Kg; ++k) bias[(g * nb + k / KT) * KT + k % KT] = b[g * Kg + k];
    }
  }
  TiledConv<T> tc{Cg, Kg, nb, int64_t(taps.size()), weights.get(), bias.empty() ? nullptr : bias.data(), y.sc,
                  y.sw, channel_block<T, KT>(s.kernel_h, Cg)};
  if (pointwise) {
    // Pointwise: output pixels in flat order, tiles of them gathered tile-major (pack_pixels).
    constexpr int64_t tile = kTileVectors<KT> * V;
    const int64_t zero_tap = 0, pixels = s.out_h * s.out_w, tiles = div_up(pixels, tile);
    const int64_t chunk = std::clamp<int64_t>(kItemBufferBytes / (s.in_channels * tile * int64_t(sizeof(T))), 1, tiles);
    const int64_t chunks = div_up(tiles, chunk), kchunks = block_chunks(s.batch * chunks, blocks);
    // With several items per (image, chunk) (small batches), the pixels are packed once, in parallel
    // by tiles, into a buffer the items share (at most 4 * threads chunks); else each item packs its own.
    std::unique_ptr<T[]> shared;
    if (kchunks > 1) {
      shared.reset(new T[s.batch * tiles * s.in_channels * tile]);
      at::parallel_for(0, s.batch * tiles, 1, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t t = i % tiles;
          pack_pixels(x, s, i / tiles, 0, s.in_channels, t * tile, std::min(pixels, (t + 1) * tile), tile,
                      shared.get() + i * s.in_channels * tile);
        }
      });
    }
    ThreadBuffers<T> buffers;
    at::parallel_for(0, s.batch * chunks * kchunks, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t item = i0; item < i1; ++item) {
        const int64_t n = item / (chunks * kchunks), t0 = item / kchunks % chunks * chunk;
        const int64_t t1 = std::min(tiles, t0 + chunk);
        const Range b = part_of(blocks, kchunks, item % kchunks);
        const int64_t g0 = b.begin / nb, g1 = (b.end - 1) / nb + 1;
        const int64_t channels = shared ? s.in_channels : (g1 - g0) * Cg;  // in a tile of the buffer
        const T* buf;
        if (shared) {
          buf = shared.get() + ((n * tiles + t0) * s.in_channels + g0 * Cg) * tile;
        } else {
          T* own = buffers.get((t1 - t0) * channels * tile);
          pack_pixels(x, s, n, g0 * Cg, g1 * Cg, t0 * tile, std::min(pixels, t1 * tile), tile, own);
          buf = own;
        }
        compute_blocks<T, KT>(tc, buf, tile, &zero_tap, g0, (t1 - t0) * tile * int64_t(sizeof(T)), y.data + n * y.sn,
                              b.begin, b.end,
                              div_up(std::min(pixels, t1 * tile) - t0 * tile, V), [&](int64_t q) {
                                const int64_t p = t0 * tile + q * V;
                                return VectorPos{q / kTileVectors<KT> * channels * tile + q % kTileVectors<KT> * V,
                                                 p / s.out_w * y.sh + p % s.out_w * y.sw, std::min(V, pixels - p)};
                              });
      }
    });
    return;
  }

  const InputGeometry geo(s);
  std::vector<int64_t> tap_offsets;
  for (const int64_t t : taps) tap_offsets.push_back(geo.taps[t]);
  const int64_t rows = rows_per_item(s, geo, s.in_channels, sizeof(T)), row_groups = div_up(s.out_h, rows);
  const int64_t kchunks = block_chunks(s.batch * row_groups, blocks), nvec = div_up(s.out_w, V);
  const int64_t rs = geo.window.row_stride();
  ThreadBuffers<T> buffers;
  at::parallel_for(0, s.batch * row_groups * kchunks, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t n = item / (row_groups * kchunks), oh0 = item / kchunks % row_groups * rows;
      const int64_t oh1 = std::min(s.out_h, oh0 + rows);
      const Range b = part_of(blocks, kchunks, item % kchunks);
      const int64_t g0 = b.begin / nb, g1 = (b.end - 1) / nb + 1;
      const Window win = geo.rows(s, oh0, oh1);
      const int64_t cs = unaliased(win.rows * rs, sizeof(T));
      T* buf = buffers.get((g1 - g0) * Cg * cs + V);
      pack_window(x, s.in_h, s.in_w, n, g0 * Cg, g1 * Cg, win, buf, cs);
      compute_blocks<T, KT>(tc, buf, cs, tap_offsets.data(), g0, cs * int64_t(sizeof(T)), y.data, b.begin, b.end,
                            (oh1 - oh0) * nvec,
                            [&](int64_t q) {
                              const int64_t row = q / nvec, ow = q % nvec * V;
                              return VectorPos{row * s.stride_h * rs + ow,
                                               n * y.sn + (oh0 + row) * y.sh + ow * y.sw,
                                               std::min(V, s.out_w - ow)};
                            });
    }
  });
}

// Small maps (output rows of at most half a vector, as in ResNet's later stages at small inputs), whose
// rows would leave most lanes of the tiles' pixel vectors empty, are computed as a 1x1 convolution
// over im2col columns instead: channel (c, j) of pixel (n, oh, ow) holds the input that the j-th tap
// reaching the image reads, and the pointwise tiles run along the pixels of all images in one row.
// Its weight is (K, Cg * taps, 1, 1): a view of the weight when every tap reaches the image.
// Columns beyond kSmallMapColumns elements take the row tiles instead.
constexpr int64_t kSmallMapColumns = int64_t(1) << 23;

template <typename T>
bool small_maps(const Conv2dShape& s) {
  const int64_t columns = s.in_channels * s.taps() * s.batch * s.out_h * s.out_w;
  return s.taps() > 1 && 2 * s.out_w <= Vec<T>::size() && columns <= kSmallMapColumns;
}

template <typename T, int KT>
void forward_small_maps(const Conv2dForward& f) {
  const Conv2dShape& s = f.shape;
  const std::vector<int64_t> taps = taps_reaching_image(s);
  const int64_t nt = int64_t(taps.size()), plane = s.out_h * s.out_w, pixels = s.batch * plane;
  if (nt == 0) return forward_tiles<T, KT>(f);  // only padding under the kernel: the bias everywhere
  const auto x = strided<const T>(f.input);
  at::Tensor columns = at::empty({1, s.in_channels * nt, 1, pixels}, f.input.options());
  at::Tensor out = at::empty({1, s.out_channels, 1, pixels}, f.output.options());
  T* col = columns.data_ptr<T>();
  at::parallel_for(0, s.in_channels * nt, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t c = i / nt, r = taps[i % nt] / s.kernel_w, q = taps[i % nt] % s.kernel_w;
      T* dst = col + i * pixels;
      for (int64_t n = 0; n < s.batch; ++n) {
        for (int64_t oh = 0; oh < s.out_h; ++oh) {
          const int64_t ih = oh * s.stride_h - s.pad_h + r * s.dilation_h;
          for (int64_t ow = 0; ow < s.out_w; ++ow) {
            const int64_t iw = ow * s.stride_w - s.pad_w + q * s.dilation_w;
            *dst++ = ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w ? *x.at(n, c, ih, iw) : T(0);
          }
        }
      }
    }
  });
  at::Tensor weight = f.weight.view({s.out_channels, s.in_per_group() * s.taps(), 1, 1});
  if (nt < s.taps()) {
    weight = at::empty({s.out_channels, s.in_per_group() * nt, 1, 1}, f.weight.options());
    const T* src = f.weight.const_data_ptr<T>();
    T* dst = weight.data_ptr<T>();
    for (int64_t kc = 0; kc < s.out_channels * s.in_per_group(); ++kc) {
      for (int64_t j = 0; j < nt; ++j) dst[kc * nt + j] = src[kc * s.taps() + taps[j]];
    }
  }
  Conv2dShape pointwise = s;
  pointwise.batch = 1;
  pointwise.in_channels *= nt;
  pointwise.in_h = pointwise.out_h = pointwise.kernel_h = pointwise.kernel_w = 1;
  pointwise.in_w = pointwise.out_w = pixels;
  pointwise.stride_h = pointwise.stride_w = pointwise.dilation_h = pointwise.dilation_w = 1;
  pointwise.pad_h = pointwise.pad_w = 0;
  pointwise.layout = Layout::nchw;
  forward_tiles<T, KT>({columns, weight, f.bias, out, pointwise});
  const auto y = strided<T>(f.output);
  const T* src = out.const_data_ptr<T>();
  at::parallel_for(0, s.out_channels, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      for (int64_t p = 0; p < pixels; ++p) {
        *y.at(p / plane, k, p % plane / s.out_w, p % s.out_w) = src[k * pixels + p];
      }
    }
  });
}

// The kernel taps that reach input phase `a` along one axis, and their grad_output offsets:
// input i = a + stride*m gets grad_output m + (a + pad - tap*dilation) / stride from tap `tap`.
struct PhaseTaps {
  std::vector<int64_t> taps, offsets;
  int64_t min_offset = 0, max_offset = 0;
};

PhaseTaps phase_taps(int64_t a, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  PhaseTaps p;
  for (int64_t t = 0; t < kernel; ++t) {
    const int64_t d = a + pad - t * dilation;
    if (((d % stride) + stride) % stride != 0) continue;
    const int64_t off = floor_div(d, stride);
    p.min_offset = p.taps.empty() ? off : std::min(p.min_offset, off);
    p.max_offset = p.taps.empty() ? off : std::max(p.max_offset, off);
    p.taps.push_back(t);
    p.offsets.push_back(off);
  }
  return p;
}

template <typename T, int KT>
void grad_input_tiles(const Conv2dBackward& b) {
  constexpr int64_t V = Vec<T>::size();
  const Conv2dShape& s = b.shape;
  const auto dy = strided<const T>(b.grad_output);
  const auto dx = strided<T>(b.grad_input);
  const int64_t Cg = s.in_per_group(), Kg = s.out_per_group(), nb = div_up(Cg, KT), blocks = s.groups * nb;
  ThreadBuffers<T> buffers;
  for (int64_t a = 0; a < std::min(s.stride_h, s.in_h); ++a) {
    for (int64_t a_w = 0; a_w < std::min(s.stride_w, s.in_w); ++a_w) {
      const int64_t rows_out = div_up(s.in_h - a, s.stride_h), cols_out = div_up(s.in_w - a_w, s.stride_w);
      const PhaseTaps th = phase_taps(a, s.kernel_h, s.stride_h, s.pad_h, s.dilation_h);
      const PhaseTaps tw = phase_taps(a_w, s.kernel_w, s.stride_w, s.pad_w, s.dilation_w);
      if (th.taps.empty() || tw.taps.empty()) {  // no kernel tap reaches this phase
        at::parallel_for(0, s.batch * s.in_channels, 1, [&](int64_t p0, int64_t p1) {
          for (int64_t p = p0; p < p1; ++p) {
            for (int64_t i = 0; i < rows_out; ++i) {
              for (int64_t j = 0; j < cols_out; ++j) {
                *dx.at(p / s.in_channels, p % s.in_channels, a + s.stride_h * i, a_w + s.stride_w * j) = T(0);
              }
            }
          }
        });
        continue;
      }
      const int64_t width = cols_out + tw.max_offset - tw.min_offset;
      std::vector<int64_t> tap_index, taps;
      // Taps whose grad_output rows or columns all lie in the padding add nothing (as in the forward).
      const auto reaches = [](int64_t offset, int64_t count, int64_t size) { return offset < size && offset + count > 0; };
      for (size_t r = 0; r < th.taps.size(); ++r) {
        for (size_t c = 0; c < tw.taps.size(); ++c) {
          if (!reaches(th.offsets[r], rows_out, s.out_h) || !reaches(tw.offsets[c], cols_out, s.out_w)) continue;
          tap_index.push_back(th.taps[r] * s.kernel_w + tw.taps[c]);
          taps.push_back((th.offsets[r] - th.min_offset) * width + tw.offsets[c] - tw.min_offset);
        }
      }
      const std::unique_ptr<T[]> weights = pack_weights(b.weight.const_data_ptr<T>(), s, KT, true, tap_index);
      const TiledConv<T> tc{Kg, Cg, nb, int64_t(taps.size()), weights.get(), nullptr, dx.sc, s.stride_w * dx.sw,
                            channel_block<T, KT>(int64_t(th.taps.size()), Kg)};
      const int64_t extra = th.max_offset - th.min_offset;
      const int64_t rows = std::clamp<int64_t>(
          kItemBufferBytes / std::max<int64_t>(s.out_channels * width * int64_t(sizeof(T)), 1) - extra, 1, rows_out);
      const int64_t row_groups = div_up(rows_out, rows), kchunks = block_chunks(s.batch * row_groups, blocks);
      const int64_t nvec = div_up(cols_out, V);
      at::parallel_for(0, s.batch * row_groups * kchunks, 1, [&](int64_t i0, int64_t i1) {
        for (int64_t item = i0; item < i1; ++item) {
          const int64_t n = item / (row_groups * kchunks), m0 = item / kchunks % row_groups * rows;
          const int64_t m1 = std::min(rows_out, m0 + rows);
          const Range bl = part_of(blocks, kchunks, item % kchunks);
          const int64_t g0 = bl.begin / nb, g1 = (bl.end - 1) / nb + 1;
          const Window win{m0 + th.min_offset, m1 - m0 + extra, tw.min_offset, 1, 1, width};
          const int64_t cs = unaliased(win.rows * width, sizeof(T));
          T* buf = buffers.get((g1 - g0) * Kg * cs + V);
          pack_window(dy, s.out_h, s.out_w, n, g0 * Kg, g1 * Kg, win, buf, cs);
          compute_blocks<T, KT>(tc, buf, cs, taps.data(), g0, cs * int64_t(sizeof(T)), dx.data, bl.begin, bl.end,
                                (m1 - m0) * nvec,
                                [&](int64_t q) {
                                  const int64_t row = q / nvec, j = q % nvec * V;
                                  return VectorPos{row * width + j,
                                                   n * dx.sn + (a + s.stride_h * (m0 + row)) * dx.sh +
                                                       (a_w + s.stride_w * j) * dx.sw,
                                                   std::min(V, cols_out - j)};
                                });
        }
      });
    }
  }
}

// ---- weight and bias gradients ----------------------------------------------------------------------

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
    } else {
      rows = std::min(div_up(kGradPixels, s.out_w), rows_per_item(s, geo, s.in_channels, elem_size));
    }
    row_groups = div_up(s.out_h, rows);
    count = div_up(s.batch, images) * row_groups;
  }
};

// One item's packed input (reduction channels of groups [g0, g1)): images [n0, n1), output rows
// [oh0, oh1); channel stride cs, image stride image_stride; output pixel (n, oh, ow) reads its first
// tap at buf + at(n, oh, ow).
template <typename T>
struct PackedItem {
  const T* buf;
  int64_t n0, n1, oh0, oh1, cs, image_stride;
  int64_t row_step;  // between the first taps of consecutive output rows (pointwise: out_w)

  int64_t at(int64_t n, int64_t oh, int64_t ow) const { return (n - n0) * image_stride + (oh - oh0) * row_step + ow; }
};

template <typename T>
PackedItem<T> pack_grad_item(const GradItems& gi, const Strided4d<const T>& x, const Conv2dShape& s, int64_t item,
                             int64_t g0, int64_t g1, ThreadBuffers<T>& buffers) {
  constexpr int64_t V = Vec<T>::size();
  const int64_t Cg = s.in_per_group(), out_plane = s.out_h * s.out_w;
  PackedItem<T> p;
  p.n0 = item / gi.row_groups * gi.images, p.n1 = std::min(s.batch, p.n0 + gi.images);
  p.oh0 = item % gi.row_groups * gi.rows, p.oh1 = std::min(s.out_h, p.oh0 + gi.rows);
  const Window win = gi.geo.rows(s, p.oh0, p.oh1);
  p.cs = gi.pointwise ? out_plane : unaliased(win.rows * gi.rs, sizeof(T));
  p.row_step = gi.pointwise ? s.out_w : s.stride_h * gi.rs;
  p.image_stride = (g1 - g0) * Cg * p.cs;
  T* buf = buffers.get((p.n1 - p.n0) * p.image_stride + V);
  for (int64_t n = p.n0; n < p.n1; ++n) {
    T* dst = buf + (n - p.n0) * p.image_stride;
    if (gi.pointwise) {
      pack_pixels(x, s, n, g0 * Cg, g1 * Cg, 0, out_plane, out_plane, dst);
    } else {
      pack_window(x, s.in_h, s.in_w, n, g0 * Cg, g1 * Cg, win, dst, p.cs);
    }
  }
  p.buf = buf;
  return p;
}

// Runs body(task, items, blocks, sums) over the tasks of a weight gradient of `blocks` output-channel
// blocks: threads split the pixel items (each into private sums, added at the end in thread order)
// when there are enough, else the blocks; then writes grad_weight.
template <typename T, typename Body>
void grad_weight_tasks(const Conv2dBackward& b, int64_t items, int64_t blocks, Body&& body) {
  const int64_t numel = b.shape.weight_numel(), threads = at::get_num_threads();
  T* dw = b.grad_weight.data_ptr<T>();
  const bool split_pixels = items >= 2 * threads;
  const int64_t tasks = split_pixels ? threads : block_chunks(1, blocks);
  std::vector<T> partial(split_pixels ? (tasks - 1) * numel : 0, T(0));
  std::fill(dw, dw + numel, T(0));
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t task = t0; task < t1; ++task) {
      const Range it = split_pixels ? part_of(items, tasks, task) : Range{0, items};
      const Range bl = split_pixels ? Range{0, blocks} : part_of(blocks, tasks, task);
      body(it, bl, split_pixels && task > 0 ? partial.data() + (task - 1) * numel : dw);
    }
  });
  if (!partial.empty()) {
    at::parallel_for(0, numel, 4096, [&](int64_t e0, int64_t e1) {
      for (int64_t t = 0; t + 1 < tasks; ++t) {
        const T* p = partial.data() + t * numel;
        for (int64_t e = e0; e < e1; ++e) dw[e] += p[e];
      }
    });
  }
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
  ThreadBuffers<T> buffers;
  grad_weight_tasks<T>(b, gi.count, blocks, [&](Range it, Range bl, T* sums) {
    const int64_t g0 = bl.begin / nb, g1 = (bl.end - 1) / nb + 1;
    std::vector<const T*> dy_steps, x_steps;
    std::vector<int64_t> pair_offset(pairs);
    for (int64_t item = it.begin; item < it.end; ++item) {
      const PackedItem<T> pk = pack_grad_item(gi, x, s, item, g0, g1, buffers);
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
              for (int q = 0; q < J; ++q) x_offset[q] = (g - g0) * Cg * pk.cs + pair_offset[std::min(q0 + q, pairs - 1)];
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
  ThreadBuffers<T> buffers, dy_buffers;
  grad_weight_tasks<T>(b, gi.count, blocks, [&](Range it, Range bl, T* sums) {
    const int64_t g0 = bl.begin / nb, g1 = (bl.end - 1) / nb + 1;
    std::vector<int64_t> pair_offset(pairs), pos;
    std::vector<std::array<int64_t, 3>> pixels;  // (n, oh, ow)
    for (int64_t item = it.begin; item < it.end; ++item) {
      const PackedItem<T> pk = pack_grad_item(gi, x, s, item, g0, g1, buffers);
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
              for (int q = 0; q < J; ++q) x_offset[q] = (g - g0) * Cg * pk.cs + pair_offset[std::min(q0 + q, pairs - 1)];
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

// ---- the CPU backend of Conv2dOps (common/conv2d_ops.h) -----------------------------------------------

// Calls f(std::integral_constant<int, KT>) with KT = min(4, channels): the output channels per tile.
template <typename F>
void with_tile_channels(int64_t channels, F&& f) {
  switch (std::min<int64_t>(channels, 4)) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    default: return f(std::integral_constant<int, 4>{});
  }
}

// Whether the weight gradient takes the channel-vector form (bench/NOTES.md, convolution entry 5):
// measured faster for every kernel larger than 1x1 on rows of up to 112 pixels, slower on 224-pixel
// rows, the same for 1x1 kernels. It needs output channels per group to fill its vectors.
bool channel_vectors_for_grad_weight(const Conv2dShape& s, int64_t lanes) {
  const bool pointwise = s.kernel_h == 1 && s.kernel_w == 1;
  return !pointwise && s.out_w < 16 * lanes && s.out_per_group() >= 2 * lanes;
}

struct CpuConv2d {
  static constexpr bool kReducedPrecision = false;

  static void forward(const Conv2dForward& f) {
    AT_DISPATCH_FLOATING_TYPES(f.input.scalar_type(), "fastdl.conv2d", [&] {
      with_tile_channels(f.shape.out_per_group(), [&](auto kt) {
        if (small_maps<scalar_t>(f.shape)) {
          forward_small_maps<scalar_t, decltype(kt)::value>(f);
        } else {
          forward_tiles<scalar_t, decltype(kt)::value>(f);
        }
      });
    });
  }

  static void backward(const Conv2dBackward& b) {
    AT_DISPATCH_FLOATING_TYPES(b.input.scalar_type(), "fastdl.conv2d_backward", [&] {
      if (b.grad_input.defined()) {
        with_tile_channels(b.shape.in_per_group(), [&](auto kt) { grad_input_tiles<scalar_t, decltype(kt)::value>(b); });
      }
      if (b.grad_weight.defined() && channel_vectors_for_grad_weight(b.shape, Vec<scalar_t>::size())) {
        grad_weight_channel_tiles<scalar_t>(b);
      } else if (b.grad_weight.defined()) {
        with_tile_channels(b.shape.out_per_group(), [&](auto kt) { grad_weight_tiles<scalar_t, decltype(kt)::value>(b); });
      }
      if (b.grad_bias.defined()) grad_bias<scalar_t>(b);
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, CPU, m) { Conv2dOps<CpuConv2d>::define_kernels(m); }

}  // namespace fastdl
