#pragma once
// The CPU convolution's packing (csrc/cpu/conv2d.cpp): input rows into zero-padded windows split into
// column phases (pack_window, InputGeometry, UnitWindows), the pixels of 1x1 kernels and of im2col
// columns tile-major (pack_pixels), and the weights in the order the tiles read them (pack_weights,
// pack_phase_weights).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/conv2d_shape.h"
#include "common/host_device.h"
#include "cpu/vec_partial.h"
#include "cpu/work_split.h"

namespace fastdl::conv2d_cpu {

constexpr int64_t kItemBufferBytes = 384 * 1024;  // packed rows of one work item: about the L2 cache

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
inline const ColumnTaps kOneTap;  // the default of pack_pixels and pointwise_tiles, so that 1x1 calls allocate no taps

// src[0], src[2], .., src[2V - 2] as a vector, reading src[0, 2V - 1) only: two loads, the second
// starting one element early so that its odd lanes hold the even elements, blended and permuted.
template <typename T>
Vec<T> every_other(const T* src) {
#if defined(CPU_CAPABILITY_AVX2) && !defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    const __m256 mixed = _mm256_blend_ps(_mm256_loadu_ps(src), _mm256_loadu_ps(src + 7), 0xAA);
    return _mm256_permutevar8x32_ps(mixed, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
  } else {
    const __m256d mixed = _mm256_blend_pd(_mm256_loadu_pd(src), _mm256_loadu_pd(src + 3), 0xA);
    return _mm256_permute4x64_pd(mixed, 0xD8);
  }
#else
  T v[Vec<T>::size()];
  for (int64_t i = 0; i < Vec<T>::size(); ++i) v[i] = src[2 * i];
  return Vec<T>::loadu(v);
#endif
}

// dst[i] = src[i * step] for i < length: a memcpy for step 1, whole vectors of every other element for
// step 2 (stride-2 layers), reading nothing past src[(length - 1) * step].
template <typename T>
C10_ALWAYS_INLINE void copy_run(T* __restrict dst, const T* __restrict src, int64_t length, int64_t step) {
  if (step == 1) {
    std::memcpy(dst, src, length * sizeof(T));
    return;
  }
  int64_t i = 0;
  if (step == 2) {
    for (; i + Vec<T>::size() <= length; i += Vec<T>::size()) every_other(src + 2 * i).store(dst + i);
  }
  for (; i < length; ++i) dst[i] = src[i * step];
}

// The input pixels of 1x1 kernels (or of im2col columns), tile-major: buf[tile][c - c0][l] is column
// channel c under output pixel p0 + tile * tile_size + l, pixels numbered in flat order across the
// batch (n * OH * OW + oh * OW + ow), zero past p1 or in the padding. A tile's values over all
// channels are then one contiguous run. Where a tile's lanes read few runs of inputs evenly spaced
// (`step` apart, below; one run per image and row break), each run is one copy_run per
// channel (lane by lane, the stride-2 gather took 19% of perf's samples of ResNet-50's stride-2 3x3
// 128-channel forward at batch 8).
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
  // Lanes `step` input elements apart make a run: 1, or 2 for stride-2 convolutions over dense rows
  // with output rows of a vector or more (7x7 outputs measured 3-5% slower with step-2 runs and the
  // prefetch they had then, two channels ahead: 512 channels 3x3 and 1024 -> 2048 1x1 on 14x14 at
  // batch 1; which of the two, not known).
  const int64_t plane = s.out_h * s.out_w, step = s.stride_w * x.sw == 2 && s.out_w >= Vec<T>::size() ? 2 : 1;
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
        in_order &= inside && off[l] == off[0] + l * step;
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
        if (last &&
            (off[l] >= 0 ? last->offset >= 0 && off[l] == last->offset + last->length * step : last->offset < 0)) {
          ++last->length;
        } else if (4 * int64_t(tap.runs.size()) < tile_size) {
          tap.runs.push_back({l, 1, off[l]});
        } else {  // too many runs (scattered lanes): copied lane by lane
          tap.runs.clear();
          break;
        }
      }
    }
    // Column channel c is input channel c / ct.count read at tap c % ct.count: both counted along.
    // Whole-tile runs and step-2 lanes prefetch the inputs after the tile's last lane, where the next
    // tile's lanes of this column channel continue on the same row for most tiles: a whole tile of
    // channels ahead, they arrive in time, where the hardware's stream prefetchers do not follow one
    // stream per channel (bench/NOTES.md, convolution entries 31 and 33). pack_pixels' samples over the
    // tile's, two threads at batch 8: 1x1 64 -> 64 on 56x56 0.56-0.60 -> 0.31-0.35; 1x1 stride 2 256 ->
    // 512 on 56x56 0.22-0.37 -> 0.20-0.29 and 3x3 stride 2 128 on 56x56 0.30-0.36 -> 0.30-0.32, against
    // the step-2 prefetch two channels ahead that this replaced.
    int64_t j = c0 % ct.count;
    const T* src = x.data + c0 / ct.count * x.sc;
    for (int64_t c = c0; c < c1; ++c, dst += tile_size) {
      const int64_t* off = offset.data() + j * tile_size;
      const TapLanes& tap = taps[j];
      const bool whole = tap.runs.size() == 1 && tap.all_inside && step == 1;
      if ((whole || step == 2) && off[tile_size - 1] >= 0) {
        const char* next = reinterpret_cast<const char*>(src + off[tile_size - 1] + step);
        const int64_t bytes = step * tile_size * int64_t(sizeof(T));
        for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(next + b);
        __builtin_prefetch(next + bytes - 1);
      }
      if (whole) {  // a copy of constant size, inlined (a library call per run made that layer 4% slower)
        std::memcpy(dst, src + off[0], tile_size * sizeof(T));
      } else if (!tap.runs.empty()) {
        for (const Run& r : tap.runs) {
          if (r.offset >= 0) {
            copy_run(dst + r.lane, src + r.offset, r.length, step);
          } else {
            std::fill(dst + r.lane, dst + r.lane + r.length, T(0));
          }
        }
      } else if (tap.all_inside) {
        for (int64_t l = 0; l < tile_size; ++l) dst[l] = src[off[l]];
      } else {
        for (int64_t l = 0; l < tile_size; ++l) dst[l] = off[l] >= 0 ? src[off[l]] : T(0);
      }
      if (++j == ct.count) {
        j = 0;
        src += x.sc;
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
inline int64_t rows_per_item(const Conv2dShape& s, const InputGeometry& geo, int64_t channels, int64_t elem_size) {
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

// A bias as the tiles read it: [group][block of `block` output channels][block], zeros past each
// group's `per_group` channels; empty where there is none.
template <typename T>
std::vector<T> pack_bias(const at::Tensor& bias, int64_t groups, int64_t per_group, int64_t block) {
  if (!bias.defined()) return {};
  const int64_t blocks = div_up(per_group, block);
  std::vector<T> packed(groups * blocks * block, T(0));
  const T* b = bias.const_data_ptr<T>();
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t k = 0; k < per_group; ++k) packed[(g * blocks + k / block) * block + k % block] = b[g * per_group + k];
  }
  return packed;
}

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

// The 1x1 input gradient's weights of output blocks [b0, b1) (numbered across groups) as pack_weights(w,
// s, true, {0}) lays them out from block b0 on, for an item that packs its own blocks (pointwise_tiles'
// one unit). Per chunk of kRows reduction channels, each source row's run over the blocks stays in L1
// while it is spread out.
template <typename T, int KT>
void pack_pointwise_input_grad_blocks(const T* w, const Conv2dShape& s, int64_t b0, int64_t b1, T* dst) {
  constexpr int64_t kRows = 16;
  const int64_t Cg = s.in_per_group(), Kg = s.out_per_group(), nb = div_up(Cg, int64_t(KT));
  for (int64_t k0 = 0; k0 < Kg; k0 += kRows) {
    const int64_t k1 = std::min(Kg, k0 + kRows);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t g = b / nb, c0 = b % nb * KT, valid = std::min<int64_t>(KT, Cg - c0);
      T* d = dst + ((b - b0) * Kg + k0) * KT;
      for (int64_t k = k0; k < k1; ++k, d += KT) {
        const T* src = w + (g * Kg + k) * Cg + c0;
        for (int j = 0; j < KT; ++j) d[j] = j < valid ? src[j] : T(0);
      }
    }
  }
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

}  // namespace fastdl::conv2d_cpu
