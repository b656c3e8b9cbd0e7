// CPU kernels of 2-D convolution (float32, float64): forward, grad_input, grad_weight, grad_bias.
//
// Forward. Work items are (image, a group of output rows, a range of output-channel blocks). An item
// copies the input rows its outputs read into a per-thread buffer, zero-padded and, for stride s > 1,
// split into s column phases so that neighbouring outputs read neighbouring elements for every
// kernel tap; then conv_tile (conv2d_tiles.h) computes 4 output channels x 3 vectors of pixels at a
// time from weights packed once per call (or read in place where each weight meets few pixel vectors:
// weights_in_place). Reduction channels go in blocks sized for the L1 cache,
// the partial sums staying in the output between blocks. A 1x1 convolution (any stride) takes the
// output pixels of the whole batch in flat order instead of rows: tiles of them are gathered
// tile-major (pack_pixels, one memcpy per channel and run of contiguous pixels), so that a tile's
// inputs over a channel block are one contiguous run; so do small maps and strided kernels over many channels, as a 1x1
// convolution over im2col columns gathered the same way (forward_columns). Of the item's inputs and
// its weights, the smaller stays in cache and the other streams (compute_blocks picks the loop order).
//
// grad_input is a convolution of the zero-padded grad_output with the transposed weights, done with
// the same tiles once per output phase (ih mod sh, iw mod sw): in phase (a, b) only the kernel taps
// with (a + ph - r*dh) and (b + pw - s*dw) divisible by the stride contribute, at a constant offset.
//
// grad_weight[k][c][r][s] sums grad_output[k] times the shifted input plane over all pixels:
// weight_grad_tile does 4 output channels x 3 (channel, tap) pairs over a block of about a thousand
// pixels (input packed as for the forward), then adds its horizontal sums. Threads take blocks of
// pixels into private sums (added at the end) when there are many pixels, else blocks of channels
// (then the input is packed once for all of them, its channels split between the threads).

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "common/conv2d_ops.h"
#include "common/overrides.h"
#include "cpu/conv2d_tiles.h"
#include "cpu/work_split.h"

namespace fastdl {
namespace {

constexpr int64_t kItemBufferBytes = 384 * 1024;  // packed rows of one work item: about the L2 cache
constexpr int64_t kTileInputBytes = 24 * 1024;    // one tile's input rows over a channel block: L1
constexpr int64_t kGradPixels = 1024;             // pixels one weight-gradient tile sums over
constexpr int64_t kGradChunkBytes = 128 * 1024;   // grad_output or input rows a weight-gradient pass reuses
constexpr int64_t kMaxColumnElements = int64_t(1) << 23;  // a gathered copy of a 1x1 or im2col input, whole

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
}

// Tiles read up to a vector past the last element they use: the slack after a packed buffer's end.
template <typename T>
void zero_slack(T* end) {
  std::fill(end, end + Vec<T>::size(), T(0));
}

// The kernel taps of a convolution computed as a pointwise one over im2col columns (forward_columns):
// column channel i is input channel i / count read at tap i % count, that is at (dh[j], dw[j]) from
// the 1x1 position. A 1x1 convolution has one tap at (0, 0).
struct ColumnTaps {
  int64_t count = 1;
  std::vector<int64_t> dh{0}, dw{0};
};
const ColumnTaps kOneTap;  // the default below, so that 1x1 calls allocate no taps

// The input pixels of 1x1 kernels (or of im2col columns), tile-major: buf[tile][c - c0][l] is column
// channel c under output pixel p0 + tile * tile_size + l, pixels numbered in flat order across the
// batch (n * OH * OW + oh * OW + ow), zero past p1 or in the padding. A tile's values over all
// channels are then one contiguous run. Where a tile's lanes read few runs of consecutive inputs
// (stride 1: one run per image and row break), each run is one memcpy per channel.
template <typename T>
void pack_pixels(const Strided4d<const T>& x, const Conv2dShape& s, int64_t c0, int64_t c1, int64_t p0, int64_t p1,
                 int64_t tile_size, T* buf, const ColumnTaps& ct = kOneTap) {
  struct Run {
    int64_t lane, length, offset;  // offset -1: zeros
  };
  struct TapLanes {
    std::vector<Run> runs;  // none: too many, copied lane by lane
    bool all_inside;
  };
  const int64_t plane = s.out_h * s.out_w;
  std::vector<int64_t> offset(ct.count * tile_size);
  std::vector<TapLanes> taps(ct.count);
  for (int64_t t0 = p0; t0 < p1; t0 += tile_size) {
    T* dst = buf + (t0 - p0) / tile_size * (c1 - c0) * tile_size;
    for (int64_t j = 0; j < ct.count; ++j) {
      int64_t* off = offset.data() + j * tile_size;
      TapLanes& tap = taps[j];
      tap.all_inside = true;
      bool in_order = true;
      // Lane l's output pixel (n, oh, ow), stepped along without divisions.
      int64_t n = t0 / plane, oh = t0 % plane / s.out_w, ow = t0 % s.out_w;
      for (int64_t l = 0; l < tile_size; ++l) {
        const int64_t ih = oh * s.stride_h - s.pad_h + ct.dh[j], iw = ow * s.stride_w - s.pad_w + ct.dw[j];
        const bool inside = t0 + l < p1 && ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w;
        off[l] = inside ? n * x.sn + ih * x.sh + iw * x.sw : -1;
        tap.all_inside &= inside;
        in_order &= inside && off[l] == off[0] + l;
        if (++ow == s.out_w) {
          ow = 0;
          if (++oh == s.out_h) {
            oh = 0;
            ++n;
          }
        }
      }
      tap.runs.assign(1, {0, tile_size, off[0]});
      if (in_order) continue;  // the common case: one run
      tap.runs.clear();
      for (int64_t l = 0; l < tile_size; ++l) {
        Run* last = tap.runs.empty() ? nullptr : &tap.runs.back();
        if (last && (off[l] >= 0 ? last->offset >= 0 && off[l] == last->offset + last->length : last->offset < 0)) {
          ++last->length;
        } else if (4 * int64_t(tap.runs.size()) < tile_size) {
          tap.runs.push_back({l, 1, off[l]});
        } else {  // too many runs (strided lanes): copied lane by lane
          tap.runs.clear();
          break;
        }
      }
    }
    for (int64_t c = c0; c < c1; ++c, dst += tile_size) {
      const int64_t j = c % ct.count;
      const T* src = x.data + c / ct.count * x.sc;
      const int64_t* off = offset.data() + j * tile_size;
      const TapLanes& tap = taps[j];
      if (tap.runs.size() == 1 && tap.all_inside) {  // a whole tile: a copy of constant size, inlined
        // (a library call per run made that layer 4% slower)
        std::memcpy(dst, src + off[0], tile_size * sizeof(T));
      } else if (!tap.runs.empty()) {
        for (const Run& r : tap.runs) {
          if (r.offset >= 0) {
            std::memcpy(dst + r.lane, src + r.offset, r.length * sizeof(T));
          } else {
            std::fill(dst + r.lane, dst + r.lane + r.length, T(0));
          }
        }
      } else if (tap.all_inside) {
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

// The packed input windows of a tiled convolution's units (an image's group of rows). When the units'
// items are split over several ranges of output-channel blocks (small batches), each unit is packed
// once, up front and in parallel, into a buffer its items share; else each item packs the channels
// it reads into its thread's buffer. pack(unit, c0, c1, dst) packs channels [c0, c1) at stride cs.
template <typename T>
class UnitWindows {
 public:
  using Pack = std::function<void(int64_t, int64_t, int64_t, T*)>;

  UnitWindows(int64_t units, int64_t channels, int64_t cs, bool shared, Pack pack)
      : cs_(cs), unit_size_(channels * cs + Vec<T>::size()), pack_(std::move(pack)) {
    if (!shared) return;
    shared_.reset(units * unit_size_);
    const int64_t grain = std::max<int64_t>(1, channels / 4);
    at::parallel_for(0, units * channels, grain, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t u = i / channels, c = i % channels;
        pack_(u, c, c + 1, shared_.get() + u * unit_size_ + c * cs_);
        if (c == channels - 1) zero_slack(shared_.get() + u * unit_size_ + channels * cs_);
      }
    });
  }

  // Channels [c0, c1) of the unit (a view of the shared buffer, or packed now).
  const T* get(int64_t unit, int64_t c0, int64_t c1) {
    if (shared_) return shared_.get() + unit * unit_size_ + c0 * cs_;
    T* own = buffers_.get((c1 - c0) * cs_ + Vec<T>::size());
    pack_(unit, c0, c1, own);
    zero_slack(own + (c1 - c0) * cs_);
    return own;
  }

 private:
  int64_t cs_, unit_size_;
  Pack pack_;
  Scratch<T> shared_;
  ThreadBuffers<T> buffers_;
};

// Runs body(unit, blocks) for the items of a tiled convolution, `units` x `kchunks` ranges of its
// output-channel blocks, spread over the threads by cost: vectors(unit) x blocks.
template <typename Vectors, typename Body>
void for_tile_items(int64_t units, int64_t blocks, int64_t kchunks, Vectors&& vectors, Body&& body) {
  parallel_by_cost(
      units * kchunks,
      [&](int64_t i) {
        const Range b = part_of(blocks, kchunks, i % kchunks);
        return vectors(i / kchunks) * b.size();
      },
      [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) body(i / kchunks, part_of(blocks, kchunks, i % kchunks));
      });
}

// Items per thread for the tiled convolutions: enough that costs spread evenly (parallel_by_cost).
constexpr int64_t kItemsPerThread = 8;


// Weights as the tiles read them: [group][block][reduction channel][tap][KT], block b holding KT
// consecutive output channels of its group (zero past the last). Forward: output channels k,
// reduction channels c, taps (r, s). Input gradient: output channels c, reduction channels k, every
// tap (pack_phase_weights packs tap subsets). Packed in parallel, by passes over 16 blocks: the
// forward's block is KT runs of the source; the input gradient's reads, per reduction channel k, a
// run [c][tap] of the source, copied out per chunk of rows. KT
// is a template parameter for the inner loops: as a run-time value it cost 40 instructions per
// element (3 ms for ResNet-50's 2048x512 weights, longer than the convolution).
template <typename T, int KT>
Scratch<T> pack_weights(const T* w, const Conv2dShape& s, bool transposed, const std::vector<int64_t>& tap_index) {
  constexpr int64_t kPassBlocks = 16, kPassElements = 4096;
  const int64_t Cg = s.in_per_group(), Kg = s.out_per_group(), taps = s.taps();
  const int64_t outs = transposed ? Cg : Kg, reds = transposed ? Kg : Cg, nt = int64_t(tap_index.size());
  const int64_t blocks = div_up(outs, KT), block_size = reds * nt * KT, passes = div_up(blocks, kPassBlocks);
  bool all_taps = nt == taps;
  for (int64_t t = 0; t < nt; ++t) all_taps &= tap_index[t] == t;
  TORCH_INTERNAL_ASSERT(!transposed || all_taps, "pack_weights takes every tap of a transposed weight");
  Scratch<T> packed(s.groups * blocks * block_size);
  // The forward's block: one pass, the KT source rows side by side, each destination line written
  // once (KT strided passes: 1.8x the packing time, convolution entry 11). Every tap of a full block is
  // one contiguous run per row; a tap subset or the last, partial block goes through the tap index
  // (as the only loop it made 512-channel layers at batch 1 slower: 3x3 on 7x7 maps 8-13%, 1x1 23%+).
  const auto pack_block = [&](int64_t g, int64_t b) {
    const int64_t o0 = b * KT, valid = std::min<int64_t>(KT, outs - o0), row = Cg * taps;
    const T* src = w + (g * Kg + o0) * row;
    T* dst = packed.get() + (g * blocks + b) * block_size;  // (c, t) at dst[(c * nt + t) * KT]
    if (all_taps && valid == KT) {
      for (int64_t i = 0; i < reds * nt; ++i, dst += KT) {
        for (int64_t j = 0; j < KT; ++j) dst[j] = src[j * row + i];
      }
      return;
    }
    for (int64_t c = 0; c < reds; ++c) {
      for (int64_t t = 0; t < nt; ++t, dst += KT) {
        const T* from = src + c * taps + tap_index[t];
        for (int64_t j = 0; j < KT; ++j) dst[j] = j < valid ? from[j * row] : T(0);
      }
    }
  };
  const int64_t* tap = tap_index.data();
  at::parallel_for(0, s.groups * passes, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t g = p / passes, b0 = p % passes * kPassBlocks, b1 = std::min(blocks, b0 + kPassBlocks);
      if (!transposed) {
        for (int64_t b = b0; b < b1; ++b) pack_block(g, b);
        continue;
      }
      // Rows of the source are Cg * taps apart (8 KiB for ResNet-50's 2048x512): read in place they
      // alias to a few cache sets. Each chunk of rows' slice of the pass is copied out first, then
      // written block by block, every write a contiguous run.
      const int64_t width = (b1 - b0) * KT * taps, rows = std::max<int64_t>(1, kPassElements / width);
      std::vector<T> slice(rows * width);
      for (int64_t k0 = 0; k0 < reds; k0 += rows) {
        const int64_t k1 = std::min(reds, k0 + rows);
        const int64_t have = std::min(width, (outs - b0 * KT) * taps);  // the last pass ends at Cg
        for (int64_t k = k0; k < k1; ++k) {
          std::memcpy(slice.data() + (k - k0) * width, w + ((g * Kg + k) * Cg + b0 * KT) * taps, have * sizeof(T));
          std::fill(slice.data() + (k - k0) * width + have, slice.data() + (k - k0 + 1) * width, T(0));
        }
        for (int64_t b = b0; b < b1; ++b) {
          T* dst = packed.get() + ((g * blocks + b) * reds + k0) * nt * KT;
          for (int64_t k = k0; k < k1; ++k) {
            const T* src = slice.data() + (k - k0) * width + (b - b0) * KT * taps;
            for (int64_t t = 0; t < nt; ++t, dst += KT) {
              const T* from = src + tap[t];
              for (int j = 0; j < KT; ++j) dst[j] = from[j * taps];
            }
          }
        }
      }
    }
  });
  return packed;
}

// The input gradient's weights for several tap subsets (the phases of a strided convolution, or the
// taps that reach a small map), each as pack_weights(w, s, true, taps) would give, in one pass over
// the source: per reduction channel k and block of KT channels, the run [c][tap] is read once and
// spread to every subset (a pass per subset read the whole weight four times for stride 2, and
// reading each subset's taps' slices copied out cost a third of the input gradient).
template <typename T, int KT>
std::vector<Scratch<T>> pack_phase_weights(const T* w, const Conv2dShape& s,
                                           const std::vector<std::vector<int64_t>>& subsets) {
  const int64_t taps = s.taps();
  if (subsets.size() == 1 && int64_t(subsets[0].size()) == taps) {
    bool in_order = true;
    for (int64_t t = 0; t < taps; ++t) in_order &= subsets[0][t] == t;
    if (in_order) {
      std::vector<Scratch<T>> one;
      one.push_back(pack_weights<T, KT>(w, s, true, subsets[0]));
      return one;
    }
  }
  constexpr int64_t kPassBlocks = 16, kPassRows = 8;
  const int64_t Cg = s.in_per_group(), Kg = s.out_per_group(), outs = Cg, reds = Kg;
  const int64_t blocks = div_up(outs, KT), passes = div_up(blocks, kPassBlocks);
  std::vector<Scratch<T>> packed;
  packed.reserve(subsets.size());
  for (const auto& subset : subsets) packed.emplace_back(s.groups * blocks * reds * int64_t(subset.size()) * KT);
  at::parallel_for(0, s.groups * passes, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t g = p / passes, b0 = p % passes * kPassBlocks, b1 = std::min(blocks, b0 + kPassBlocks);
      for (int64_t k0 = 0; k0 < reds; k0 += kPassRows) {
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t valid = std::min<int64_t>(KT, outs - b * KT);
          for (int64_t k = k0; k < std::min(reds, k0 + kPassRows); ++k) {
            const T* src = w + ((g * Kg + k) * Cg + b * KT) * taps;
            for (size_t q = 0; q < subsets.size(); ++q) {
              const int64_t nt = int64_t(subsets[q].size());
              const int64_t* tap = subsets[q].data();
              T* dst = packed[q].get() + ((g * blocks + b) * reds + k) * nt * KT;
              for (int64_t t = 0; t < nt; ++t, dst += KT) {
                for (int j = 0; j < KT; ++j) dst[j] = j < valid ? src[j * taps + tap[t]] : T(0);
              }
            }
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
  // Weights read in place (weights is the weight tensor's data) when taps is set: output channel o,
  // reduction channel r and tap t of group g at weights[g * group + o * out + r * red + taps[t]].
  struct InPlace {
    const int64_t* taps = nullptr;
    int64_t group = 0, out = 0, red = 0;
  } in_place;
};

// Where a vector of pixels reads (from its buffer's channel 0) and writes (from output channel 0).
struct VectorPos {
  int64_t in, out, count;
  LaneJumps jumps = {};  // where its output pixels leave their run (pointwise_tiles)
};

template <int KT>
constexpr int kTileVectors = KT == 4 ? 3 : 4;  // 12 or fewer accumulators

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
  const typename TiledConv<T>::InPlace& ip = tc.in_place;
  std::vector<int64_t> offsets(tc.channel_block * tc.ntaps), weight_offsets(ip.taps ? offsets.size() : 0);
  for (int64_t c = 0; c < tc.channel_block; ++c) {
    for (int64_t t = 0; t < tc.ntaps; ++t) {
      offsets[c * tc.ntaps + t] = c * cs + taps[t];
      if (ip.taps) weight_offsets[c * tc.ntaps + t] = c * ip.red + ip.taps[t];
    }
  }
  std::vector<VectorPos> pos(vectors);
  bool any_jumps = false;
  for (int64_t q = 0; q < vectors; ++q) {
    pos[q] = vector_at(q);
    any_jumps |= pos[q].jumps.lane < pos[q].count;
  }
  const bool blocks_outside = in_channel_bytes < (b1 - b0) * KT * tc.ntaps * int64_t(sizeof(T));
  for (int64_t g = b0 / tc.blocks; g <= (b1 - 1) / tc.blocks; ++g) {
    const int64_t kb0 = std::max(b0, g * tc.blocks), kb1 = std::min(b1, (g + 1) * tc.blocks);
    const T* group_in = buf + (g - first_group) * tc.reds * cs;
    for (int64_t c0 = 0; c0 < tc.reds; c0 += tc.channel_block) {
      const TileGeometry geo{std::min(tc.channel_block, tc.reds - c0) * tc.ntaps, offsets.data(),
                             tc.out_channel_stride, tc.out_pixel_stride,
                             ip.taps ? weight_offsets.data() : nullptr, ip.out};
      const TileInit init = c0 > 0 ? TileInit::accumulate : tc.bias ? TileInit::bias : TileInit::zero;
      const auto run = [&](int64_t q, int64_t kb) {
        const int n = tile_width<VT>(q, vectors);
        const int64_t k0 = (kb - g * tc.blocks) * KT, out_shift = (g * tc.outs + k0) * tc.out_channel_stride;
        const T* in[VT];
        T* outs[VT];
        int64_t count[VT];
        for (int v = 0; v < n; ++v) {
          in[v] = group_in + c0 * cs + pos[q + v].in;
          outs[v] = out + pos[q + v].out + out_shift;
          count[v] = pos[q + v].count;
        }
        LaneJumps jumps[VT];
        bool jumping = false;
        for (int v = 0; any_jumps && v < n; ++v) {
          jumps[v] = pos[q + v].jumps;
          jumping |= jumps[v].lane < count[v];
        }
        const T* w = ip.taps ? tc.weights + g * ip.group + k0 * ip.out + c0 * ip.red
                             : tc.weights + (kb * tc.reds + c0) * tc.ntaps * KT;
        const T* bias = tc.bias ? tc.bias + kb * KT : nullptr;
        const int64_t kvalid = std::min<int64_t>(KT, tc.outs - k0);
        if (jumping) {
          conv_tile_upto<T, KT, VT, true>(in, outs, count, geo, w, init, bias, kvalid, n, jumps);
        } else {
          conv_tile_upto<T, KT, VT>(in, outs, count, geo, w, init, bias, kvalid, n);
        }
      };
      if (blocks_outside) {
        for (int64_t kb = kb0; kb < kb1; ++kb) {
          for (int64_t q = 0; q < vectors; q += tile_width<VT>(q, vectors)) run(q, kb);
        }
      } else {
        for (int64_t q = 0; q < vectors; q += tile_width<VT>(q, vectors)) {
          for (int64_t kb = kb0; kb < kb1; ++kb) run(q, kb);
        }
      }
    }
  }
}

// The tiles over units of rows (forward and input gradient): unit u is image u / row_groups, its rows
// unit_rows(u), each of nvec pixel vectors, its items split over `blocks` output-channel blocks;
// vector_at(u, row, first) places the vector starting at pixel `first` of the unit's row `row`
// (counted from the unit's first row).
template <typename T, int KT, typename Rows, typename VectorAt>
void run_row_units(const TiledConv<T>& tc, UnitWindows<T>& windows, int64_t cs, const int64_t* taps, T* out,
                   int64_t units, int64_t row_groups, int64_t blocks, int64_t kchunks, int64_t nvec, Rows&& unit_rows,
                   VectorAt&& vector_at) {
  constexpr int64_t V = Vec<T>::size();
  const auto unit_vectors = [&](int64_t unit) { return unit_rows(unit).size() * nvec; };
  for_tile_items(units, blocks, kchunks, unit_vectors, [&](int64_t unit, Range b) {
    const int64_t g0 = b.begin / tc.blocks, g1 = (b.end - 1) / tc.blocks + 1;
    const T* buf = windows.get(unit, g0 * tc.reds, g1 * tc.reds);
    compute_blocks<T, KT>(tc, buf, cs, taps, g0, cs * int64_t(sizeof(T)), out, b.begin, b.end, unit_vectors(unit),
                          [&](int64_t q) { return vector_at(unit, q / nvec, q % nvec * V); });
  });
}

// Reduction channels per pass: a tile's inputs over them fit kTileInputBytes. Where neighbouring output
// pixels are not adjacent (out_pixel_stride > 1: a phase of a strided input gradient, channels-last
// outputs), every pass after the first reads and writes the tile's outputs element by element, which
// costs more than streaming the inputs from L2: one pass over every channel. Two threads, stride-2 3x3
// input gradient of ResNet-50's 256 channels on 28x28 at batch 8: 42-85 channels a pass 20.1 ms, one
// pass 15.5 (bench/NOTES.md, convolution entry 13).
template <typename T, int KT>
int64_t channel_block(int64_t kernel_rows, int64_t reds, int64_t out_pixel_stride) {
  if (out_pixel_stride != 1) return std::max<int64_t>(reds, 1);
  const int64_t per_channel = kernel_rows * kTileVectors<KT> * (Vec<T>::size() * int64_t(sizeof(T)) + 64);
  return std::clamp<int64_t>(kTileInputBytes / per_channel, 8, std::max<int64_t>(reds, 1));
}

// Reduction channels per pass over tile-major inputs (pointwise_tiles, grad_weight_pointwise): there a
// tile's inputs are one contiguous run of VT * V values per channel, read in order, so the pass is
// bounded by the L2 cache instead: fewer passes mean fewer read-modify-writes of the outputs. One
// thread, 1x1 1024->256 on 14x14 at batch 8: 85 channels per pass 12.2 ms, 341: 11.0, 1024: 10.2.
constexpr int64_t kPointwiseTileBytes = 128 * 1024;

template <typename T, int KT>
int64_t pointwise_channel_block(int64_t reds) {
  const int64_t per_channel = kTileVectors<KT> * Vec<T>::size() * int64_t(sizeof(T));
  return std::clamp<int64_t>(kPointwiseTileBytes / per_channel, 8, std::max<int64_t>(reds, 1));
}

// Whether the tiles of the forward (rows and 1x1) and of the row-wise input gradient read the weights
// where they are instead of packed (TiledConv::InPlace), given how many pixel vectors each weight
// meets and whether the call reads each weight once. Packing reads and writes every weight once more,
// a large part of the work where each weight meets few vectors: a quarter of the input gradient of
// 512x512 3x3 on 7x7 maps at batch 1 (7 vectors; bench/NOTES.md, convolution entries 9 and 14). Two
// threads, in place against packed: that layer's forward 2.68 -> 2.09 ms, input gradient 3.59 -> 2.74;
// at batch 8 (56 vectors) 14.6 -> 14.1 and 15.4 -> 15.0; on 14x14 at batch 1 (28 vectors) 7.63 -> 6.99
// and 8.43 -> 7.34; at 112 vectors within 2% either way. Kept packed: the phases of a strided input
// gradient, which packed read the weight once for all of them (pack_phase_weights; in place 4.85 ->
// 5.79 ms for 512 channels on 14x14 at batch 1), and the 1x1 input gradient (grad_input_pointwise),
// whose steps are reduction channels 2-8 KB apart in the weight, aliasing in the L1 cache (in place
// 1.85 -> 2.37 ms for 512->2048 on 7x7). FASTDL_CONV_WEIGHTS_IN_PLACE = always | never overrides the
// rule where it applies.
constexpr int64_t kInPlaceWeightVectors = 64;

bool weights_in_place(int64_t vectors, bool read_once) {
  return override_or("FASTDL_CONV_WEIGHTS_IN_PLACE", read_once && vectors <= kInPlaceWeightVectors);
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

// Where the weights outweigh the batch's whole packed input and that input is at most this (1x1 layers
// on 14x14 and 7x7 maps at batch 1), the pointwise tiles run as one unit over every pixel, split
// between the threads by output-channel blocks only: each weight is read from memory once (an item's
// blocks meet every tile while their weights are in cache: in L1 when compute_blocks runs the tiles
// inside the blocks, else L2), where units of one tile each had read every weight once per unit. Two threads, fastest of 200,
// units of one tile -> one unit (bench/NOTES.md, convolution entry 30): 2048 -> 512 on 7x7 forward
// 0.94 -> 0.86-0.91 ms, input gradient 1.14-1.67 -> 1.05-1.06; 1024 -> 256 on 14x14 0.70 -> 0.66 and
// 0.74-0.75 -> 0.70; 256 -> 1024 on 14x14 0.69 -> 0.64 and 0.75 -> 0.71. A limit of 4 MB took in
// 2048 -> 512 on 7x7 at batch 8 (3.3 MB), which then ran slower in one of two rounds.
constexpr int64_t kWholeUnitInputBytes = int64_t(1) << 20;

// A pointwise (1x1) convolution with the tiles of tc (weights packed, output strides set for y): the
// output pixels of the whole batch in flat order (n * OH * OW + oh * OW + ow), tiles of them gathered
// tile-major (pack_pixels; with ct, im2col columns of the input: forward_columns). A vector that
// crosses into the next image stores its lanes there (LaneJumps), so the only partly filled vector is
// the batch's last: with tiles per image, 14x14 maps (196 pixels, 24.5 vectors) ended every image in
// a one-vector tile of 4 pixels, and 7x7 maps were gathered whole into [C][N * 49] first and their
// outputs copied back. y's rows must be contiguous runs (y.sh == out_w * y.sw), as in the outputs
// this file allocates.
template <typename T, int KT>
void pointwise_tiles(const Strided4d<const T>& x, const Strided4d<T>& y, const Conv2dShape& s, const TiledConv<T>& tc,
                     const ColumnTaps& ct = kOneTap) {
  constexpr int64_t V = Vec<T>::size();
  constexpr int64_t tile = kTileVectors<KT> * V;
  const int64_t Cg = s.in_per_group(), nb = tc.blocks, blocks = s.groups * nb;
  const int64_t zero_tap = 0, plane = s.out_h * s.out_w, pixels = s.batch * plane, tiles = div_up(pixels, tile);
  // Tiles per unit: their inputs over one channel block fit the L1 cache (compute_blocks runs the unit's
  // tiles inside its output-channel blocks when the weights are the larger), or every tile in one unit
  // (kWholeUnitInputBytes).
  const int64_t tile_bytes = tile * int64_t(sizeof(T)), input_bytes = tiles * s.in_channels * tile_bytes;
  const bool whole = input_bytes <= kWholeUnitInputBytes && blocks * KT * tc.reds * int64_t(sizeof(T)) > input_bytes;
  const int64_t tiles_in_l1 = kTileInputBytes / (std::min(tc.channel_block, tc.reds) * tile_bytes);
  const int64_t chunk = whole ? tiles : std::clamp<int64_t>(tiles_in_l1, 1, tiles);
  const int64_t chunks = div_up(tiles, chunk), kchunks = block_chunks(chunks, blocks, kItemsPerThread);
  // With several items per chunk (small batches), the pixels are packed once, in parallel by tiles,
  // into a buffer the items share (up to kMaxColumnElements); else each item packs its own.
  Scratch<T> shared;
  if (kchunks > 1 && tiles * s.in_channels * tile <= kMaxColumnElements) {
    shared.reset(tiles * s.in_channels * tile);
    at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        pack_pixels(x, s, 0, s.in_channels, t * tile, std::min(pixels, (t + 1) * tile), tile,
                    shared.get() + t * s.in_channels * tile, ct);
      }
    });
  }
  ThreadBuffers<T> buffers;
  // How much further than one pixel step the next image's first output lies (0 where the output is
  // channels-last: its images follow on at the same step, and no vector needs jumps).
  const int64_t jump = y.sn - plane * y.sw;
  const auto chunk_vectors = [&](int64_t unit) {
    const int64_t t0 = unit * chunk;
    return div_up(std::min(pixels, (t0 + chunk) * tile) - t0 * tile, V);
  };
  for_tile_items(chunks, blocks, kchunks, chunk_vectors, [&](int64_t unit, Range b) {
    const int64_t t0 = unit * chunk, t1 = std::min(tiles, t0 + chunk);
    const int64_t g0 = b.begin / nb, g1 = (b.end - 1) / nb + 1;
    const int64_t channels = shared ? s.in_channels : (g1 - g0) * Cg;  // in a tile of the buffer
    const T* buf;
    if (shared) {
      buf = shared.get() + (t0 * s.in_channels + g0 * Cg) * tile;
    } else {
      T* own = buffers.get((t1 - t0) * channels * tile);
      pack_pixels(x, s, g0 * Cg, g1 * Cg, t0 * tile, std::min(pixels, t1 * tile), tile, own, ct);
      buf = own;
    }
    compute_blocks<T, KT>(tc, buf, tile, &zero_tap, g0, (t1 - t0) * tile * int64_t(sizeof(T)), y.data, b.begin, b.end,
                          chunk_vectors(unit), [&](int64_t q) {
                            const int64_t p = t0 * tile + q * V, n = p / plane, i = p % plane;
                            VectorPos pos{q / kTileVectors<KT> * channels * tile + q % kTileVectors<KT> * V,
                                          n * y.sn + i / s.out_w * y.sh + i % s.out_w * y.sw,
                                          std::min(V, pixels - p)};
                            if (jump != 0 && plane - i < pos.count) pos.jumps = {plane - i, plane, jump};
                            return pos;
                          });
  });
}

template <typename T, int KT>
void forward_tiles(const Conv2dForward& f, const ColumnTaps& ct = kOneTap) {
  constexpr int64_t V = Vec<T>::size();
  const Conv2dShape& s = f.shape;
  const auto x = strided<const T>(f.input);
  const auto y = strided<T>(f.output);
  const int64_t Cg = s.in_per_group(), Kg = s.out_per_group(), nb = div_up(Kg, KT), blocks = s.groups * nb;
  const bool pointwise = s.kernel_h == 1 && s.kernel_w == 1;  // its padding is packed as zeros instead
  const std::vector<int64_t> taps = pointwise ? std::vector<int64_t>{0} : taps_reaching_image(s);
  const int64_t nvec = div_up(s.out_w, V);
  const bool in_place =
      weights_in_place(s.batch * (pointwise ? div_up(s.out_h * s.out_w, V) : s.out_h * nvec), true);
  const Scratch<T> weights = in_place ? Scratch<T>() : pack_weights<T, KT>(f.weight.const_data_ptr<T>(), s, false, taps);
  std::vector<T> bias;
  if (f.bias.defined()) {
    bias.assign(blocks * KT, T(0));
    const T* b = f.bias.const_data_ptr<T>();
    for (int64_t g = 0; g < s.groups; ++g) {
      for (int64_t k = 0; k < Kg; ++k) bias[(g * nb + k / KT) * KT + k % KT] = b[g * Kg + k];
    }
  }
  TiledConv<T> tc{Cg, Kg, nb, int64_t(taps.size()), in_place ? f.weight.const_data_ptr<T>() : weights.get(),
                  bias.empty() ? nullptr : bias.data(), y.sc, y.sw,
                  pointwise ? pointwise_channel_block<T, KT>(Cg) : channel_block<T, KT>(s.kernel_h, Cg, y.sw)};
  if (in_place) tc.in_place = {taps.data(), Kg * Cg * s.taps(), Cg * s.taps(), s.taps()};
  if (pointwise) return pointwise_tiles<T, KT>(x, y, s, tc, ct);

  const InputGeometry geo(s);
  std::vector<int64_t> tap_offsets;
  for (const int64_t t : taps) tap_offsets.push_back(geo.taps[t]);
  // Units: an image's group of output rows, the groups of near-equal size.
  const int64_t row_groups = div_up(s.out_h, rows_per_item(s, geo, s.in_channels, sizeof(T)));
  const int64_t units = s.batch * row_groups, kchunks = block_chunks(units, blocks, kItemsPerThread);
  const int64_t rs = geo.window.row_stride();
  const auto unit_rows = [&](int64_t unit) { return part_of(s.out_h, row_groups, unit % row_groups); };
  const int64_t cs = unaliased(geo.rows(s, 0, div_up(s.out_h, row_groups)).rows * rs, sizeof(T));
  UnitWindows<T> windows(units, s.in_channels, cs, kchunks > 1, [&](int64_t unit, int64_t c0, int64_t c1, T* dst) {
    const Range r = unit_rows(unit);
    pack_window(x, s.in_h, s.in_w, unit / row_groups, c0, c1, geo.rows(s, r.begin, r.end), dst, cs);
  });
  run_row_units<T, KT>(tc, windows, cs, tap_offsets.data(), y.data, units, row_groups, blocks, kchunks, nvec, unit_rows,
                       [&](int64_t unit, int64_t row, int64_t ow) {
                         const int64_t n = unit / row_groups, oh = unit_rows(unit).begin + row;
                         return VectorPos{row * s.stride_h * rs + ow, n * y.sn + oh * y.sh + ow * y.sw,
                                          std::min(V, s.out_w - ow)};
                       });
}

// A convolution computed as a pointwise (1x1) one over im2col columns: column channel (c, j) of output
// pixel (n, oh, ow) holds the input that the j-th kernel tap reaching the image reads there. The
// pointwise tiles gather the columns tile by tile as they go (pack_pixels with ColumnTaps). Its weight
// is (K, Cg * taps, 1, 1): a view of the weight when every tap reaches the image. Taken where rows
// leave the tiles short of pixels:
// - small maps (output rows of at most half a vector, as in ResNet's later stages at small inputs)
//   whose columns would fit kMaxColumnElements (the rule from when they were gathered whole);
// - strided kernels over kMinStridedColumnChannels+ input channels per group. Their rows of 7-28
//   outputs, split into column phases, ran units of a few rows with half of the tiles 2 vectors wide.
//   Two threads, ResNet's stride-2 3x3 layers forward, rows -> columns, medians of 10-30 calls in
//   2-3 rounds (bench/NOTES.md, convolution entry 15): 64 -> 128 channels on 56x56 at batch 1
//   2.28-2.36 -> 1.34-1.74 ms, at batch 8 17.4-19.3 -> 10.8-13.6; 256 on 28x28 at batch 8 25.6-33.0
//   -> 18.2-20.2. The 3-channel stems (7x7 stride 2, 11x11 stride 4) lost at batch 1 (2.9-3.8 ->
//   5.1-5.5 ms, 1.5-2.3 -> 3.0-3.2): a channel's gathered taps are too little work per tile.
constexpr int64_t kMinStridedColumnChannels = 64;

template <typename T>
bool columns_forward(const Conv2dShape& s) {
  if (s.taps() == 1) return false;
  const bool pays = 2 * s.out_w <= Vec<T>::size()
                        ? s.in_channels * s.taps() * s.batch * s.out_h * s.out_w <= kMaxColumnElements
                        : (s.stride_h > 1 || s.stride_w > 1) && s.in_per_group() >= kMinStridedColumnChannels;
  return override_or("FASTDL_CONV_COLUMNS", pays);
}

template <typename T, int KT>
void forward_columns(const Conv2dForward& f) {
  const Conv2dShape& s = f.shape;
  const std::vector<int64_t> taps = taps_reaching_image(s);
  const int64_t nt = int64_t(taps.size());
  if (nt == 0) return forward_tiles<T, KT>(f);  // only padding under the kernel: the bias everywhere
  ColumnTaps ct{nt, {}, {}};
  for (const int64_t t : taps) {
    ct.dh.push_back(t / s.kernel_w * s.dilation_h);
    ct.dw.push_back(t % s.kernel_w * s.dilation_w);
  }
  at::Tensor weight = f.weight.view({s.out_channels, s.in_per_group() * s.taps(), 1, 1});
  if (nt < s.taps()) {
    weight = at::empty({s.out_channels, s.in_per_group() * nt, 1, 1}, f.weight.options());
    const T* src = f.weight.const_data_ptr<T>();
    T* dst = weight.data_ptr<T>();
    for (int64_t kc = 0; kc < s.out_channels * s.in_per_group(); ++kc) {
      for (int64_t j = 0; j < nt; ++j) dst[kc * nt + j] = src[kc * s.taps() + taps[j]];
    }
  }
  Conv2dShape columns = s;  // the input's geometry, with Cg * nt channels under a 1x1 kernel
  columns.in_channels *= nt;
  columns.kernel_h = columns.kernel_w = 1;
  columns.dilation_h = columns.dilation_w = 1;
  forward_tiles<T, KT>({f.input, weight, f.bias, f.output, columns}, ct);
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

// The input gradient of an unpadded 1x1 convolution is a pointwise convolution of grad_output with
// the transposed weights (pointwise_tiles). With stride s it lands on every s-th input pixel: computed
// dense, then spread out with zeros between.
template <typename T, int KT>
void grad_input_pointwise(const Conv2dBackward& b) {
  const Conv2dShape& s = b.shape;
  const auto dy = strided<const T>(b.grad_output);
  const auto dx = strided<T>(b.grad_input);
  const int64_t Cg = s.in_per_group(), Kg = s.out_per_group();
  const Scratch<T> weights = pack_weights<T, KT>(b.weight.const_data_ptr<T>(), s, true, {0});
  Conv2dShape t = s;  // grad_output to grad_input
  t.in_channels = s.out_channels;
  t.out_channels = s.in_channels;
  t.in_h = s.out_h;
  t.in_w = s.out_w;
  t.stride_h = t.stride_w = 1;
  const bool strided_out = s.stride_h > 1 || s.stride_w > 1;
  Scratch<T> dense_memory(strided_out ? s.batch * s.in_channels * s.out_h * s.out_w : 0);
  const at::Tensor dense = strided_out ? at::from_blob(dense_memory.get(), {s.batch, s.in_channels, s.out_h, s.out_w},
                                                       b.grad_input.options())
                                       : b.grad_input;
  const auto y = strided<T>(dense);
  const TiledConv<T> tc{Kg, Cg, div_up(Cg, KT), 1, weights.get(), nullptr, y.sc, y.sw,
                        pointwise_channel_block<T, KT>(Kg)};
  pointwise_tiles<T, KT>(dy, y, t, tc);
  if (!strided_out) return;
  // Row by row: zeros, then the row's outputs at every stride_w-th column (with divisions per element
  // this pass took 10% of perf's samples of the input gradient of ResNet-50's 512 -> 1024 stride-2 1x1
  // on 28x28 at batch 8, and 11-20% of its time; bench/NOTES.md, convolution 28). Unpadded 1x1: every
  // stride-th row and column of the input has its output (out = ceil(in / stride)).
  at::parallel_for(0, s.batch * s.in_channels, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / s.in_channels, c = i % s.in_channels;
      for (int64_t ih = 0; ih < s.in_h; ++ih) {
        T* row = dx.at(n, c, ih, 0);
        for (int64_t iw = 0; iw < s.in_w; ++iw) row[iw * dx.sw] = T(0);
        if (ih % s.stride_h != 0) continue;
        const T* src = y.at(n, c, ih / s.stride_h, 0);
        for (int64_t ow = 0; ow < s.out_w; ++ow) row[ow * s.stride_w * dx.sw] = src[ow * y.sw];
      }
    }
  });
}

// The phases of a strided input gradient: phase (a, a_w) is grad_input's pixels (a + stride*i,
// a_w + stride*j), and the kernel taps that reach them (PhaseTaps per axis). Taps whose grad_output
// rows or columns all lie in the padding add nothing and are left out.
struct Phase {
  int64_t a, a_w, rows_out, cols_out, width;  // width: the grad_output columns the phase's rows read
  PhaseTaps th, tw;
  std::vector<int64_t> tap_index;  // kernel taps r * S + s reaching the phase; empty: none
  std::vector<int64_t> rows, cols;  // per tap: its grad_output row and column offsets
};

std::vector<Phase> strided_phases(const Conv2dShape& s) {
  const auto reaches = [](int64_t offset, int64_t count, int64_t size) { return offset < size && offset + count > 0; };
  std::vector<Phase> phases;
  for (int64_t a = 0; a < std::min(s.stride_h, s.in_h); ++a) {
    for (int64_t a_w = 0; a_w < std::min(s.stride_w, s.in_w); ++a_w) {
      Phase ph{a, a_w, div_up(s.in_h - a, s.stride_h), div_up(s.in_w - a_w, s.stride_w), 0,
               phase_taps(a, s.kernel_h, s.stride_h, s.pad_h, s.dilation_h),
               phase_taps(a_w, s.kernel_w, s.stride_w, s.pad_w, s.dilation_w), {}, {}, {}};
      ph.width = ph.cols_out + ph.tw.max_offset - ph.tw.min_offset;
      for (size_t r = 0; r < ph.th.taps.size(); ++r) {
        for (size_t c = 0; c < ph.tw.taps.size(); ++c) {
          if (!reaches(ph.th.offsets[r], ph.rows_out, s.out_h) || !reaches(ph.tw.offsets[c], ph.cols_out, s.out_w)) {
            continue;
          }
          ph.tap_index.push_back(ph.th.taps[r] * s.kernel_w + ph.tw.taps[c]);
          ph.rows.push_back(ph.th.offsets[r]);
          ph.cols.push_back(ph.tw.offsets[c]);
        }
      }
      phases.push_back(std::move(ph));
    }
  }
  return phases;
}

// The tap subsets of the phases that have taps, in phase order (pack_phase_weights).
std::vector<std::vector<int64_t>> phase_subsets(const std::vector<Phase>& phases) {
  std::vector<std::vector<int64_t>> subsets;
  for (const Phase& ph : phases) {
    if (!ph.tap_index.empty()) subsets.push_back(ph.tap_index);
  }
  return subsets;
}

template <typename T, int KT>
void grad_input_tiles(const Conv2dBackward& b) {
  constexpr int64_t V = Vec<T>::size();
  const Conv2dShape& s = b.shape;
  if (s.kernel_h == 1 && s.kernel_w == 1 && s.pad_h == 0 && s.pad_w == 0) return grad_input_pointwise<T, KT>(b);
  const auto dy = strided<const T>(b.grad_output);
  const auto dx = strided<T>(b.grad_input);
  const int64_t Cg = s.in_per_group(), Kg = s.out_per_group(), nb = div_up(Cg, KT), blocks = s.groups * nb;
  const std::vector<Phase> phases = strided_phases(s);
  const std::vector<std::vector<int64_t>> subsets = phase_subsets(phases);
  int64_t uses = 0;  // pixel vectors per weight, over every phase
  for (const Phase& ph : phases) uses += ph.tap_index.empty() ? 0 : s.batch * ph.rows_out * div_up(ph.cols_out, V);
  const bool in_place = weights_in_place(uses, subsets.size() == 1);
  const std::vector<Scratch<T>> packed =
      in_place ? std::vector<Scratch<T>>() : pack_phase_weights<T, KT>(b.weight.const_data_ptr<T>(), s, subsets);
  size_t next_weights = 0;
  for (const Phase& ph : phases) {
    const int64_t a = ph.a, a_w = ph.a_w, rows_out = ph.rows_out, cols_out = ph.cols_out, width = ph.width;
    if (ph.tap_index.empty()) {  // no kernel tap reaches this phase: its pixels' gradient is zero
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
    const PhaseTaps &th = ph.th, &tw = ph.tw;
    std::vector<int64_t> taps;  // each tap's offset in the phase's packed window
    for (size_t t = 0; t < ph.rows.size(); ++t) {
      taps.push_back((ph.rows[t] - th.min_offset) * width + ph.cols[t] - tw.min_offset);
    }
    const int64_t pixel_step = s.stride_w * dx.sw;  // between the phase's neighbouring pixels in dx
    TiledConv<T> tc{Kg, Cg, nb, int64_t(taps.size()),
                    in_place ? b.weight.const_data_ptr<T>() : packed[next_weights++].get(), nullptr, dx.sc,
                    pixel_step, channel_block<T, KT>(int64_t(th.taps.size()), Kg, pixel_step)};
    if (in_place) tc.in_place = {ph.tap_index.data(), Kg * Cg * s.taps(), s.taps(), Cg * s.taps()};
    const int64_t extra = th.max_offset - th.min_offset;
    const int64_t rows = std::clamp<int64_t>(
        kItemBufferBytes / std::max<int64_t>(s.out_channels * width * int64_t(sizeof(T)), 1) - extra, 1, rows_out);
    // Units: an image's group of rows of this phase, the groups of near-equal size.
    const int64_t row_groups = div_up(rows_out, rows), units = s.batch * row_groups;
    const int64_t kchunks = block_chunks(units, blocks, kItemsPerThread), nvec = div_up(cols_out, V);
    const auto unit_rows = [&](int64_t unit) { return part_of(rows_out, row_groups, unit % row_groups); };
    const int64_t cs = unaliased((div_up(rows_out, row_groups) + extra) * width, sizeof(T));
    UnitWindows<T> windows(units, s.out_channels, cs, kchunks > 1, [&](int64_t unit, int64_t k0, int64_t k1, T* dst) {
      const Range r = unit_rows(unit);
      const Window win{r.begin + th.min_offset, r.size() + extra, tw.min_offset, 1, 1, width};
      pack_window(dy, s.out_h, s.out_w, unit / row_groups, k0, k1, win, dst, cs);
    });
    run_row_units<T, KT>(tc, windows, cs, taps.data(), dx.data, units, row_groups, blocks, kchunks, nvec,
                         unit_rows, [&](int64_t unit, int64_t row, int64_t j) {
                           const int64_t n = unit / row_groups, m = unit_rows(unit).begin + row;
                           return VectorPos{row * width + j,
                                            n * dx.sn + (a + s.stride_h * m) * dx.sh + (a_w + s.stride_w * j) * dx.sw,
                                            std::min(V, cols_out - j)};
                         });
  }
}

// The input gradient of a strided convolution over many output channels, phase by phase as a pointwise
// (1x1) convolution over grad_output's im2col columns, the twin of forward_columns: phase (a, a_w)'s
// column channel (k, j) under its pixel (m, m_w) is grad_output k at (m + rows[j], m_w + cols[j]),
// the phase's j-th tap; the weights are pack_phase_weights' ([block][k][tap][KT] is [block][column
// channel][KT]). The tiles write each phase dense ([n][c][rows_out][cols_out]: flat pixel order needs
// contiguous rows), then the phases are put in place in grad_input. Images go in chunks whose phases
// fit kMaxColumnElements. Taken for strided kernels over kMinStridedColumnChannels+ channels per group
// both ways whose phase rows are longer than a vector. Two threads, input gradient only, rows ->
// columns, medians in one process (bench/NOTES.md, convolution entry 16): 128 channels on 56x56 at
// batch 8 19.6 -> 15.1 ms, 256 on 28x28 at batch 8 16.4 -> 14.6. Not taken: 512 on 14x14 (phases of
// 7x7 pixels; batch 1 3.2 -> 3.9 ms) and the 3-channel stems, whose three output channels starve the
// tiles (ResNet's 7x7 stride 2 at batch 1 6.5 -> 22.1 ms, AlexNet's 11x11 stride 4 3.6 -> 12.9).
template <typename T>
bool columns_grad_input(const Conv2dShape& s) {
  if (s.taps() == 1 || s.in_channels * s.in_h * s.in_w > kMaxColumnElements) return false;
  const bool pays = (s.stride_h > 1 || s.stride_w > 1) &&
                    std::min(s.in_per_group(), s.out_per_group()) >= kMinStridedColumnChannels &&
                    div_up(s.in_w, s.stride_w) > Vec<T>::size();
  return override_or("FASTDL_CONV_COLUMNS", pays);
}

template <typename T, int KT>
void grad_input_columns(const Conv2dBackward& b) {
  const Conv2dShape& s = b.shape;
  const auto dy = strided<const T>(b.grad_output);
  const auto dx = strided<T>(b.grad_input);
  const int64_t Cg = s.in_per_group(), Kg = s.out_per_group();
  const std::vector<Phase> phases = strided_phases(s);
  const std::vector<Scratch<T>> packed =
      pack_phase_weights<T, KT>(b.weight.const_data_ptr<T>(), s, phase_subsets(phases));
  std::vector<int64_t> start;  // each phase's offset in an image's dense block, or -1: no tap reaches it
  int64_t image = 0;
  for (const Phase& ph : phases) {
    start.push_back(ph.tap_index.empty() ? -1 : image);
    if (!ph.tap_index.empty()) image += s.in_channels * ph.rows_out * ph.cols_out;
  }
  const int64_t chunk = std::clamp<int64_t>(kMaxColumnElements / std::max<int64_t>(image, 1), 1, s.batch);
  Scratch<T> dense(chunk * image);
  for (int64_t n0 = 0; n0 < s.batch; n0 += chunk) {
    const int64_t images = std::min(chunk, s.batch - n0);
    size_t next_weights = 0;
    for (size_t i = 0; i < phases.size(); ++i) {
      const Phase& ph = phases[i];
      if (ph.tap_index.empty()) continue;
      const int64_t nt = int64_t(ph.tap_index.size()), plane = ph.rows_out * ph.cols_out;
      Conv2dShape t = s;  // grad_output's columns to the phase's pixels
      t.batch = images;
      t.in_channels = s.out_channels * nt;
      t.out_channels = s.in_channels;
      t.in_h = s.out_h;
      t.in_w = s.out_w;
      t.out_h = ph.rows_out;
      t.out_w = ph.cols_out;
      t.kernel_h = t.kernel_w = t.stride_h = t.stride_w = t.dilation_h = t.dilation_w = 1;
      t.pad_h = t.pad_w = 0;
      const ColumnTaps ct{nt, ph.rows, ph.cols};
      const Strided4d<T> y{dense.get() + images * start[i], s.in_channels * plane, plane, ph.cols_out, 1};
      const TiledConv<T> tc{Kg * nt, Cg, div_up(Cg, KT), 1, packed[next_weights++].get(), nullptr, y.sc, y.sw,
                            pointwise_channel_block<T, KT>(Kg * nt)};
      pointwise_tiles<T, KT>({dy.data + n0 * dy.sn, dy.sn, dy.sc, dy.sh, dy.sw}, y, t, tc, ct);
    }
    at::parallel_for(0, images * s.in_channels, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        T* const to = dx.data + (n0 + i / s.in_channels) * dx.sn + i % s.in_channels * dx.sc;
        for (size_t q = 0; q < phases.size(); ++q) {
          const Phase& ph = phases[q];
          const int64_t plane = ph.rows_out * ph.cols_out, step = s.stride_w * dx.sw;
          const T* from = start[q] < 0 ? nullptr : dense.get() + images * start[q] + i * plane;
          for (int64_t m = 0; m < ph.rows_out; ++m) {
            T* row = to + (ph.a + s.stride_h * m) * dx.sh + ph.a_w * dx.sw;
            for (int64_t j = 0; j < ph.cols_out; ++j) row[j * step] = from ? from[m * ph.cols_out + j] : T(0);
          }
        }
      }
    });
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

bool pointwise_grad_weight(const Conv2dShape& s) {
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
        if (columns_forward<scalar_t>(f.shape)) {
          forward_columns<scalar_t, decltype(kt)::value>(f);
        } else {
          forward_tiles<scalar_t, decltype(kt)::value>(f);
        }
      });
    });
  }

  static void backward(const Conv2dBackward& b) {
    AT_DISPATCH_FLOATING_TYPES(b.input.scalar_type(), "fastdl.conv2d_backward", [&] {
      if (b.grad_input.defined()) {
        with_tile_channels(b.shape.in_per_group(), [&](auto kt) {
          if (columns_grad_input<scalar_t>(b.shape)) {
            grad_input_columns<scalar_t, decltype(kt)::value>(b);
          } else {
            grad_input_tiles<scalar_t, decltype(kt)::value>(b);
          }
        });
      }
      if (b.grad_weight.defined() && pointwise_grad_weight(b.shape)) {
        with_tile_channels(b.shape.out_channels, [&](auto kt) { grad_weight_pointwise<scalar_t, decltype(kt)::value>(b); });
      } else if (b.grad_weight.defined() && channel_vectors_for_grad_weight(b.shape, Vec<scalar_t>::size())) {
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
