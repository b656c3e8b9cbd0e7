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
// tile-major (pack_pixels, one copy per channel and run of evenly spaced pixels), so that a tile's
// inputs over a channel block are one contiguous run; so do small maps and strided kernels over many channels, as a 1x1
// convolution over im2col columns gathered the same way (forward_columns). Of the item's inputs and
// its weights, the smaller stays in cache and the other streams (compute_blocks picks the loop order).
//
// grad_input is a convolution of the zero-padded grad_output with the transposed weights, done with
// the same tiles once per output phase (ih mod sh, iw mod sw): in phase (a, b) only the kernel taps
// with (a + ph - r*dh) and (b + pw - s*dw) divisible by the stride contribute, at a constant offset.
//
// The weight and bias gradients are in conv2d_grad_weight.h, the packing in conv2d_packing.h, how
// the tiles run over a call in conv2d_blocks.h and the input gradient's phases in conv2d_phases.h.
// Channels-last calls with enough channels and pixels take the kernels of conv2d_channels_last.h
// instead (vectors along the output channels: forward, input gradient, 1x1 weight gradient).

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/conv2d_ops.h"
#include "common/overrides.h"
#include "cpu/conv2d_blocks.h"
#include "cpu/conv2d_channels_last.h"
#include "cpu/conv2d_grad_weight.h"
#include "cpu/conv2d_packing.h"
#include "cpu/conv2d_phases.h"

namespace fastdl::conv2d_cpu {
namespace {

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
  const std::vector<T> bias = pack_bias<T>(f.bias, s.groups, Kg, KT);
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
                       [&](int64_t unit) {
                         const int64_t row_step = s.stride_h * rs, out_w = s.out_w, sh = y.sh, sw = y.sw;
                         const int64_t first = unit / row_groups * y.sn + unit_rows(unit).begin * sh;
                         return [=](int64_t row, int64_t ow) {
                           return VectorPos{row * row_step + ow, first + row * sh + ow * sw, std::min(V, out_w - ow)};
                         };
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

// The input gradient of an unpadded 1x1 convolution is a pointwise convolution of grad_output with
// the transposed weights (pointwise_tiles). With stride s it lands on every s-th input pixel: computed
// dense, then spread out with zeros between.
template <typename T, int KT>
void grad_input_pointwise(const Conv2dBackward& b) {
  const Conv2dShape& s = b.shape;
  const auto dy = strided<const T>(b.grad_output);
  const auto dx = strided<T>(b.grad_input);
  const int64_t Cg = s.in_per_group(), Kg = s.out_per_group();
  Conv2dShape t = s;  // grad_output to grad_input
  t.in_channels = s.out_channels;
  t.out_channels = s.in_channels;
  t.in_h = s.out_h;
  t.in_w = s.out_w;
  t.stride_h = t.stride_w = 1;
  // Where the tiles run as one unit (each weight meeting few pixels: 1x1 layers on 7x7 and 14x14 maps at
  // batch 1), each item packs the transposed weights of its own output-channel blocks just before its
  // tiles, into a per-thread buffer that stays in L2, instead of a pass over the whole weight first
  // (which wrote the 4 MB of ResNet-50's 2048x512 weight to memory and read it back: about a fifth of
  // that layer's input gradient; bench/NOTES.md, convolution entries 30 and 37). Time after over
  // before, one process, two threads, batch 1: 2048 -> 512 on 7x7 0.96, 512 -> 2048 on 7x7 0.87,
  // 1024 -> 256 on 14x14 0.97, 256 -> 1024 on 14x14 0.96, the stride-2 1024 -> 2048 on 14x14 0.81.
  const bool own_blocks = pointwise_whole_unit<T, KT>(t, s.groups * div_up(Cg, int64_t(KT)), Kg);
  const T* w = b.weight.const_data_ptr<T>();
  const Scratch<T> weights = own_blocks ? Scratch<T>() : pack_weights<T, KT>(w, s, true, {0});
  const BlockPacker<T> pack_blocks = [&](int64_t b0, int64_t b1, T* dst) {
    pack_pointwise_input_grad_blocks<T, KT>(w, s, b0, b1, dst);
  };
  const bool strided_out = s.stride_h > 1 || s.stride_w > 1;
  Scratch<T> dense_memory(strided_out ? s.batch * s.in_channels * s.out_h * s.out_w : 0);
  const at::Tensor dense = strided_out ? at::from_blob(dense_memory.get(), {s.batch, s.in_channels, s.out_h, s.out_w},
                                                       b.grad_input.options())
                                       : b.grad_input;
  const auto y = strided<T>(dense);
  const TiledConv<T> tc{Kg, Cg, div_up(Cg, KT), 1, weights.get(), nullptr, y.sc, y.sw,
                        pointwise_channel_block<T, KT>(Kg)};
  pointwise_tiles<T, KT>(dy, y, t, tc, kOneTap, own_blocks ? &pack_blocks : nullptr);
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
                         unit_rows, [&](int64_t unit) {
                           const int64_t row_step = s.stride_h * dx.sh;
                           const int64_t first = unit / row_groups * dx.sn +
                                                 (a + s.stride_h * unit_rows(unit).begin) * dx.sh + a_w * dx.sw;
                           return [=](int64_t row, int64_t j) {
                             return VectorPos{row * width + j, first + row * row_step + j * pixel_step,
                                              std::min(V, cols_out - j)};
                           };
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

// ---- the CPU backend of Conv2dOps (common/conv2d_ops.h) -----------------------------------------------

struct CpuConv2d {
  static constexpr bool kReducedPrecision = false;

  static void forward(const Conv2dForward& f) {
    AT_DISPATCH_FLOATING_TYPES(f.input.scalar_type(), "fastdl.conv2d", [&] {
      const Conv2dShape& s = f.shape;
      if (channel_vectors<scalar_t>(s, s.out_per_group(), s.batch * s.out_h * s.out_w)) {
        return forward_channels_last<scalar_t>(f);
      }
      with_tile_channels(s.out_per_group(), [&](auto kt) {
        if (columns_forward<scalar_t>(s)) {
          forward_columns<scalar_t, decltype(kt)::value>(f);
        } else {
          forward_tiles<scalar_t, decltype(kt)::value>(f);
        }
      });
    });
  }

  static void backward(const Conv2dBackward& b) {
    AT_DISPATCH_FLOATING_TYPES(b.input.scalar_type(), "fastdl.conv2d_backward", [&] {
      const Conv2dShape& s = b.shape;
      if (b.grad_input.defined() && channel_vectors<scalar_t>(s, s.in_per_group(), s.batch * s.in_h * s.in_w)) {
        grad_input_channels_last<scalar_t>(b);
      } else if (b.grad_input.defined()) {
        with_tile_channels(s.in_per_group(), [&](auto kt) {
          if (columns_grad_input<scalar_t>(s)) {
            grad_input_columns<scalar_t, decltype(kt)::value>(b);
          } else {
            grad_input_tiles<scalar_t, decltype(kt)::value>(b);
          }
        });
      }
      if (b.grad_weight.defined() && channel_vector_grad_weight<scalar_t>(s)) {
        grad_weight_channels_last_pointwise<scalar_t>(b);
      } else if (b.grad_weight.defined()) {
        grad_weight<scalar_t>(b);
      }
      if (b.grad_bias.defined()) grad_bias<scalar_t>(b);
    });
  }
};

}  // namespace
}  // namespace fastdl::conv2d_cpu

namespace fastdl {

TORCH_LIBRARY_IMPL(fastdl, CPU, m) { Conv2dOps<conv2d_cpu::CpuConv2d>::define_kernels(m); }

}  // namespace fastdl
