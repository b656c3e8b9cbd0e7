#pragma once
// How the CPU convolution's tiles (conv2d_tiles.h) are run over a call (csrc/cpu/conv2d.cpp): a
// convolution as the tiles see it (TiledConv), output-channel blocks over an item's pixel vectors
// (compute_blocks), items spread over the threads by cost (for_tile_items), units of rows
// (run_row_units), and 1x1 convolutions over the batch's pixels in flat order (pointwise_tiles), which
// the forward, the input gradient and the 1x1 weight gradient share.

#include <ATen/Parallel.h>

#include <algorithm>
#include <functional>
#include <type_traits>
#include <vector>

#include "cpu/conv2d_packing.h"
#include "cpu/conv2d_tiles.h"

namespace fastdl::conv2d_cpu {

constexpr int64_t kTileInputBytes = 24 * 1024;            // one tile's input rows over a channel block: L1
constexpr int64_t kMaxColumnElements = int64_t(1) << 23;  // a gathered copy of a 1x1 or im2col input, whole

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
  int64_t first_block = 0;     // the block `weights` starts at (packed weights of an item's own blocks)
};

// Where a vector of pixels reads (from its buffer's channel 0) and writes (from output channel 0).
struct VectorPos {
  int64_t in, out, count;
  LaneJumps jumps = {};  // where its output pixels leave their run (pointwise_tiles)
};

template <int KT>
constexpr int kTileVectors = KT == 4 ? 3 : 4;  // 12 or fewer accumulators

// Where a pass has at most kStoreBoundSteps reduction steps (channels x taps) the tile's stores are a
// large share of its work, and compute_blocks runs the blocks outside the tiles whenever the unit's
// inputs over the pass fit L2 (each block then writes its output rows in runs, the inputs re-read from
// L2), not only where they outweigh the weights. VGG-16's features.0 (27 steps, 309 KB units), time
// before over after, one process, two threads (bench/NOTES.md, convolution entry 36): 1.03-1.04 at
// batch 1, 1.04-1.32 at batch 8; LeNet-5's first layer 1.02; 7x7 and 11x11 stems unchanged.
constexpr int64_t kStoreBoundSteps = 64;
constexpr int64_t kStoreBoundUnitBytes = 512 * 1024;

// Output blocks [b0, b1) (numbered across groups) of `vectors` pixel vectors. buf holds the reduction
// channels of groups first_group.. at channel stride cs, each `in_channel_bytes` of the item's input;
// vector_at(q) places vector q. Of the item's inputs and the weights, the smaller is kept in cache
// and the other streamed once per channel block: tiles inside the blocks loop when the inputs are
// smaller (small images) or short passes' inputs fit L2 (kStoreBoundSteps), blocks inside the tiles
// loop otherwise.
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
  const int64_t pass_channels = std::min(tc.channel_block, tc.reds);
  const bool blocks_outside = in_channel_bytes < (b1 - b0) * KT * tc.ntaps * int64_t(sizeof(T)) ||
                              (pass_channels * tc.ntaps <= kStoreBoundSteps &&
                               pass_channels * in_channel_bytes <= kStoreBoundUnitBytes);
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
                             : tc.weights + ((kb - tc.first_block) * tc.reds + c0) * tc.ntaps * KT;
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
// unit_vectors_at(u) returns a function whose (row, first) places the vector starting at pixel `first`
// of the unit's row `row` (counted from the unit's first row). It holds what depends on the unit only,
// computed once per item: placing a vector from the unit took four integer divisions, 2-3% of the time
// of ResNet-50's conv1 at batch 1 (bench/NOTES.md, convolution entry 32).
template <typename T, int KT, typename Rows, typename UnitVectorsAt>
void run_row_units(const TiledConv<T>& tc, UnitWindows<T>& windows, int64_t cs, const int64_t* taps, T* out,
                   int64_t units, int64_t row_groups, int64_t blocks, int64_t kchunks, int64_t nvec, Rows&& unit_rows,
                   UnitVectorsAt&& unit_vectors_at) {
  constexpr int64_t V = Vec<T>::size();
  const auto unit_vectors = [&](int64_t unit) { return unit_rows(unit).size() * nvec; };
  for_tile_items(units, blocks, kchunks, unit_vectors, [&](int64_t unit, Range b) {
    const int64_t g0 = b.begin / tc.blocks, g1 = (b.end - 1) / tc.blocks + 1;
    const T* buf = windows.get(unit, g0 * tc.reds, g1 * tc.reds);
    const auto vector_at = unit_vectors_at(unit);
    compute_blocks<T, KT>(tc, buf, cs, taps, g0, cs * int64_t(sizeof(T)), out, b.begin, b.end, unit_vectors(unit),
                          [&vector_at, nvec](int64_t q) { return vector_at(q / nvec, q % nvec * V); });
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

// Whether pointwise_tiles runs every tile of s as one unit (kWholeUnitInputBytes), given its blocks of
// KT output channels over `reds` reduction channels.
template <typename T, int KT>
bool pointwise_whole_unit(const Conv2dShape& s, int64_t blocks, int64_t reds) {
  constexpr int64_t tile = kTileVectors<KT> * Vec<T>::size();
  const int64_t tiles = div_up(s.batch * s.out_h * s.out_w, tile);
  const int64_t input_bytes = tiles * s.in_channels * tile * int64_t(sizeof(T));
  return input_bytes <= kWholeUnitInputBytes && blocks * KT * reds * int64_t(sizeof(T)) > input_bytes;
}

// Packs the weights of output-channel blocks [b0, b1) into dst as tc.weights would hold them from
// block b0 on (pointwise_tiles with an item's own weights).
template <typename T>
using BlockPacker = std::function<void(int64_t b0, int64_t b1, T* dst)>;

// Units of (at least) 4 tiles where their inputs fit 96 KB (reductions over 256 channels or fewer) and
// the batch still gives every thread kItemsPerThread units: each output-channel block then stores 4
// tiles' pixels in one run (384 bytes a channel) instead of 96 bytes a tile, the next tile's 96 bytes
// of that channel coming only after every other block's. Stores alone (outputs sent to a scratch
// line) were 15-18% of ResNet-50's 256 -> 1024 on 14x14 at batch 8 (bench/NOTES.md, convolution
// entry 35); in one process, switched call by call, two threads: that layer forward 1.11x at batch 8,
// 1.14x at 32 (1.16x at one thread), 128 -> 512 on 28x28 1.10x, 256 -> 64 on 56x56 1.02-1.06x, the
// input gradient of 1024 -> 256 on 14x14 1.04x at batch 8 and 1.12x at 32.
constexpr int64_t kStoreRunTiles = 4;
constexpr int64_t kStoreRunInputBytes = 96 * 1024;

// A pointwise (1x1) convolution with the tiles of tc (weights packed, output strides set for y): the
// output pixels of the whole batch in flat order (n * OH * OW + oh * OW + ow), tiles of them gathered
// tile-major (pack_pixels; with ct, im2col columns of the input: forward_columns). A vector that
// crosses into the next image stores its lanes there (LaneJumps), so the only partly filled vector is
// the batch's last: with tiles per image, 14x14 maps (196 pixels, 24.5 vectors) ended every image in
// a one-vector tile of 4 pixels, and 7x7 maps were gathered whole into [C][N * 49] first and their
// outputs copied back. y's rows must be contiguous runs (y.sh == out_w * y.sw), as in the outputs
// conv2d.cpp allocates.
template <typename T, int KT>
void pointwise_tiles(const Strided4d<const T>& x, const Strided4d<T>& y, const Conv2dShape& s, const TiledConv<T>& tc,
                     const ColumnTaps& ct = kOneTap, const BlockPacker<T>* pack_blocks = nullptr) {
  constexpr int64_t V = Vec<T>::size();
  constexpr int64_t tile = kTileVectors<KT> * V;
  const int64_t Cg = s.in_per_group(), nb = tc.blocks, blocks = s.groups * nb;
  const int64_t zero_tap = 0, plane = s.out_h * s.out_w, pixels = s.batch * plane, tiles = div_up(pixels, tile);
  // Tiles per unit: their inputs over one channel block fit the L1 cache (compute_blocks runs the unit's
  // tiles inside its output-channel blocks when the weights are the larger), or at least kStoreRunTiles,
  // or every tile in one unit (kWholeUnitInputBytes).
  const int64_t tile_bytes = tile * int64_t(sizeof(T));
  const bool whole = pointwise_whole_unit<T, KT>(s, blocks, tc.reds);
  TORCH_INTERNAL_ASSERT(!pack_blocks || whole, "pointwise_tiles packs items' own weights in one unit only");
  const int64_t pass_bytes = std::min(tc.channel_block, tc.reds) * tile_bytes;
  int64_t chunk = whole ? tiles : std::clamp<int64_t>(kTileInputBytes / pass_bytes, 1, tiles);
  if (!whole && chunk < kStoreRunTiles && kStoreRunTiles * pass_bytes <= kStoreRunInputBytes &&
      div_up(tiles, kStoreRunTiles) >= kItemsPerThread * at::get_num_threads()) {
    chunk = kStoreRunTiles;
  }
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
  ThreadBuffers<T> buffers, weight_buffers;
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
    TiledConv<T> item_tc = tc;
    if (pack_blocks) {
      T* weights = weight_buffers.get((b.end - b.begin) * tc.reds * KT);
      (*pack_blocks)(b.begin, b.end, weights);
      item_tc.weights = weights;
      item_tc.first_block = b.begin;
    }
    compute_blocks<T, KT>(item_tc, buf, tile, &zero_tap, g0, (t1 - t0) * tile * int64_t(sizeof(T)), y.data, b.begin, b.end,
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

}  // namespace fastdl::conv2d_cpu
