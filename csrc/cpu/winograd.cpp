// CPU kernels of Winograd convolution F(m x m, r x r): F(2x2,3x3), F(4x4,3x3) and F(2x2,5x5) (float32,
// float64): the forward, the input gradient and the weight gradient (the transforms and their algebra
// are in common/winograd.h). alpha = m + r - 1 is 4 for F(2x2,3x3) and 6 for the other two.
//
// Output tiles (m x m blocks of one image's outputs) are numbered over the batch and taken in
// blocks of a few dozen, so that memory stays bounded whatever the batch. A work item is (a block
// of tiles, a range of output-channel blocks): it transforms its tiles' input patches over every
// channel into V[xi][c][tile] (vectors along tiles: 8 float32 tiles are transformed at once), does
// the alpha^2 matrix products M[xi][k][tile] = sum_c U[xi][k][c] V[xi][c][tile] with the direct
// convolution's register tile (conv_tile: 4 output channels x 3 vectors of tiles, the filters
// packed [xi][block][c][4]; M stored [k][vector of tiles][xi][lane]), then transforms M back into
// m x m outputs, adds the bias and writes
// the pixels that lie inside the image. Few tiles (up to kStagedBytes of V and M) instead run each
// stage once over all tiles (winograd_conv_staged). The filters are transformed once per call.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "common/winograd.h"
#include "common/winograd_ops.h"
#include "cpu/conv2d_tiles.h"
#include "cpu/scratch.h"
#include "cpu/work_split.h"

namespace fastdl {
namespace {

constexpr int KT = 4;                          // output channels per register tile
constexpr int VT = 3;                          // vectors of tiles per register tile
constexpr int64_t kBlockBytes = 1024 * 1024;  // transformed inputs of one block of tiles
// The most transformed tiles and sums (V and M) for which every tile goes through each stage at once
// (winograd_conv_staged). F(4x4) forward, two threads, blocked -> staged, torch time / fastdl time:
// VGG-16 conv5 (512, 14x14) at batch 8 (18.9 MB) 1.64x -> 1.75x, ResNet-50 layer1 (64, 56x56) at
// batch 1 (3.6 MB) 0.80x -> 1.97x; 256 channels on 28x28 at batch 8 (28.9 MB) 2.22x -> 1.90x.
constexpr int64_t kStagedBytes = int64_t(20) << 20;
// The weight gradient's blocks of tiles: their transformed inputs and grad_outputs take as many bytes
// as its alpha^2 x K x C sums (each block reads and writes those once: 37.7 MB for F4 at 512 channels),
// from a sixteenth of this bound to the bound. F4, batch 8, Winograd / direct time with blocks of 2 and
// 32 MB: 64 channels on 56x56 1.17x / 0.90x, 128 on 56x56 1.68x / 1.34x, 512 on 14x14 0.72x / 1.48x.
constexpr int64_t kWeightGradBlockBytes = int64_t(32) << 20;
constexpr int64_t kWeightGradRunBytes = 16 * 1024;  // transformed inputs one register tile reduces over

// One Winograd convolution as the kernels see it: output (n, k, oh, ow) is bias[k] plus the sum over
// c < channels and r, s < R (the filter's size) of filter[k][c][r][s] * x[n][c][oh - pad_h + r][ow -
// pad_w + s], x zero outside [0, in_h) x [0, in_w). The padding may be negative (the input gradient's,
// for padding > R - 1).
template <typename T>
struct WinogradConv {
  Strided4d<const T> x;
  Strided4d<T> y;
  int64_t batch, channels, in_h, in_w;
  int64_t outs, out_h, out_w;
  int64_t pad_h, pad_w;
  const T* bias;  // outs values, or null
};

// U = G g G^T of every (output, reduction channel) pair, packed [xi][block][c][KT] (zero past the last
// output), in a buffer the calling thread keeps (a fresh one of up to tens of MB would be paged in
// on every call). w is (outs, reds, R, R), or with `transposed` (reds, outs, R, R) rotated by 180
// degrees. A vector holds the KT outputs of one block for L / KT consecutive channels, which is
// exactly a run of the packed layout: each of the alpha^2 results is one whole-vector store.
template <typename T, int M, int R>
const T* transform_filters(const T* w, int64_t outs, int64_t reds, bool transposed) {
  constexpr int A = M + R - 1;
  constexpr int64_t L = Vec<T>::size(), CP = L / KT;  // channels per vector
  static_assert(L % KT == 0, "a vector holds whole blocks of outputs");
  const int64_t blocks = div_up(outs, KT);
  thread_local std::vector<T> packed;
  packed.resize(std::max<size_t>(packed.size(), A * A * blocks * KT * reds + L));
  T* dst = packed.data();
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t kb = b0; kb < b1; ++kb) {
      for (int64_t c0 = 0; c0 < reds; c0 += CP) {
        T lanes[R][R][L];
        for (int64_t l = 0; l < L; ++l) {
          const int64_t o = kb * KT + l % KT, c = c0 + l / KT;
          const bool in = o < outs && c < reds;
          const T* g = transposed ? w + (c * outs + o) * R * R : w + (o * reds + c) * R * R;
          for (int r = 0; r < R; ++r) {
            for (int s = 0; s < R; ++s) {
              lanes[r][s][l] = !in ? T(0) : transposed ? g[(R - 1 - r) * R + R - 1 - s] : g[r * R + s];
            }
          }
        }
        Vec<T> g[R][R], u[A][A];
        for (int r = 0; r < R; ++r) {
          for (int s = 0; s < R; ++s) g[r][s] = Vec<T>::loadu(lanes[r][s]);
        }
        winograd_filter_transform<M, T>(g, u);
        const int64_t n = std::min(CP, reds - c0) * KT;
        for (int xi = 0; xi < A * A; ++xi) {
          u[xi / A][xi % A].store(dst + ((xi * blocks + kb) * reds + c0) * KT, n);
        }
      }
    }
  });
  return dst;
}

// Where the input patch of each tile of a block starts.
struct TilePatch {
  int64_t n, row0, col0;
  bool valid;  // a tile of the convolution (blocks are padded to whole vectors)
};

// The patches of tiles first, first + 1, ... (tiles numbered image by image, row by row).
template <typename T, int M>
void place_tiles(const WinogradConv<T>& p, int64_t first, std::vector<TilePatch>& patches) {
  const int64_t tiles_h = div_up(p.out_h, M), tiles_w = div_up(p.out_w, M), tiles = p.batch * tiles_h * tiles_w;
  for (int64_t l = 0; l < int64_t(patches.size()); ++l) {
    const int64_t t = first + l, tw = t % tiles_w, th = t / tiles_w % tiles_h;
    TilePatch& patch = patches[l];
    patch = {t < tiles ? t / (tiles_w * tiles_h) : 0, th * M - p.pad_h, tw * M - p.pad_w, t < tiles};
  }
}

#if defined(CPU_CAPABILITY_AVX2)
// gather_lanes for float rows of unit stride: each lane's row i read as one masked load of its columns
// inside the plane (AVX2 masked loads never touch masked-out elements, so the row may start left of the
// plane or end past it), zero for rows outside; then the 8 lanes' rows transposed in registers into
// d[i][0..R), instead of 8 R^2 scalar loads and stores through memory.
template <int R>
void gather_rows_transposed(const float* const* src, const int64_t* row0, const int64_t* col0, int64_t sh,
                            int64_t h, int64_t w, Vec<float> (&d)[R][R]) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i mask[8];
  for (int l = 0; l < 8; ++l) {  // columns j of the block with 0 <= col0 + j < w, j < R
    const int64_t lo = std::clamp<int64_t>(-col0[l], 0, R), hi = std::clamp<int64_t>(w - col0[l], 0, R);
    mask[l] = _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(int(hi)), lane),
                               _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(int(lo) - 1)));
  }
  for (int i = 0; i < R; ++i) {
    __m256 r[8];
    for (int l = 0; l < 8; ++l) {
      const int64_t ih = row0[l] + i;
      r[l] = src[l] != nullptr && ih >= 0 && ih < h ? _mm256_maskload_ps(src[l] + ih * sh + col0[l], mask[l])
                                                    : _mm256_setzero_ps();
    }
    // 8x8 transpose: t pairs lanes, u quadruples them, the 128-bit halves finish it (column j of d[i]).
    __m256 t[8], u[8];
    for (int k = 0; k < 4; ++k) {
      t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
      t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    for (int k = 0; k < 2; ++k) {
      u[4 * k] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], 0x44);
      u[4 * k + 1] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], 0xEE);
      u[4 * k + 2] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0x44);
      u[4 * k + 3] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0xEE);
    }
    for (int j = 0; j < R; ++j) {
      d[i][j] = j < 4 ? _mm256_permute2f128_ps(u[j], u[j + 4], 0x20) : _mm256_permute2f128_ps(u[j - 4], u[j], 0x31);
    }
  }
}
#endif

// Vectors of V lanes, each lane an R x R block of its own plane: d[i][j] lane l is element
// (row0[l] + i, col0[l] + j) of the h x w plane at src[l] (strides sh, sw), zero outside the plane and
// where src[l] is null.
template <int R, typename T>
void gather_lanes(const T* const* src, const int64_t* row0, const int64_t* col0, int64_t sh, int64_t sw, int64_t h,
                  int64_t w, Vec<T> (&d)[R][R]) {
  constexpr int64_t V = Vec<T>::size();
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float> && V == 8 && R <= V) {
    if (sw == 1) return gather_rows_transposed<R>(src, row0, col0, sh, h, w, d);
  }
#endif
  T lanes[R][R][V];
  for (int64_t l = 0; l < V; ++l) {
    const bool valid = src[l] != nullptr;
    const bool inside = valid && row0[l] >= 0 && row0[l] + R <= h && col0[l] >= 0 && col0[l] + R <= w;
    for (int i = 0; i < R; ++i) {
      const int64_t ih = row0[l] + i;
      const bool row_in = valid && ih >= 0 && ih < h;
      for (int j = 0; j < R; ++j) {
        const int64_t iw = col0[l] + j;
        const bool in = inside || (row_in && iw >= 0 && iw < w);
        lanes[i][j][l] = in ? src[l][ih * sh + iw * sw] : T(0);
      }
    }
  }
  for (int i = 0; i < R; ++i) {
    for (int j = 0; j < R; ++j) d[i][j] = Vec<T>::loadu(lanes[i][j]);
  }
}

// The R x R blocks of one channel under the V tiles from `tiles`, each starting at its patch origin
// plus (shift_h, shift_w) in a plane of h x w (n-th image at plane + n * x.sn), as vectors along the
// tiles: lane l is tile l's block, zero outside the plane and for padding tiles.
template <int R, typename T>
void gather_blocks(const T* plane, const Strided4d<const T>& x, const TilePatch* tiles, int64_t shift_h,
                   int64_t shift_w, int64_t h, int64_t w, Vec<T> (&d)[R][R]) {
  constexpr int64_t V = Vec<T>::size();
  const T* src[V];
  int64_t row0[V], col0[V];
  for (int64_t l = 0; l < V; ++l) {
    src[l] = tiles[l].valid ? plane + tiles[l].n * x.sn : nullptr;
    row0[l] = tiles[l].row0 + shift_h;
    col0[l] = tiles[l].col0 + shift_w;
  }
  gather_lanes<R>(src, row0, col0, x.sh, x.sw, h, w, d);
}

template <typename T, int M, int R>
void transform_inputs(const WinogradConv<T>& p, const std::vector<TilePatch>& patches, T* v, int64_t cs,
                      Range channels) {
  constexpr int A = M + R - 1;
  constexpr int64_t V = Vec<T>::size();
  const int64_t tb = int64_t(patches.size()), C = p.channels;
  for (int64_t c = channels.begin; c < channels.end; ++c) {
    for (int64_t q = 0; q < tb; q += V) {
      Vec<T> d[A][A], u[A][A];
      gather_blocks<A>(p.x.data + c * p.x.sc, p.x, patches.data() + q, 0, 0, p.in_h, p.in_w, d);
      winograd_input_transform<M, T>(d, u);
      for (int xi = 0; xi < A * A; ++xi) u[xi / A][xi % A].store(v + (xi * C + c) * cs + q);
    }
  }
}

// m x m outputs per tile of output channels [k0, k1) from the sums m_buf[k - k0][tile / V][xi][tile % V]
// (the products' layout: a vector of tiles' alpha^2 sums next to each other, so that this reads m_buf
// in order and the hardware prefetches it).
template <typename T, int M, int R>
void transform_outputs(const WinogradConv<T>& p, const std::vector<TilePatch>& patches, const T* m_buf,
                       int64_t k0, int64_t k1) {
  constexpr int A = M + R - 1;
  constexpr int64_t V = Vec<T>::size();
  const int64_t tb = int64_t(patches.size());
  for (int64_t k = k0; k < k1; ++k) {
    for (int64_t q = 0; q < tb; q += V) {
      Vec<T> m[A][A], y[M][M];
      const T* sums = m_buf + (k - k0) * A * A * tb + q * A * A;
      for (int xi = 0; xi < A * A; ++xi) m[xi / A][xi % A] = Vec<T>::loadu(sums + xi * V);
      winograd_output_transform<M, T>(m, y);
      T lanes[M][M][V];
      const Vec<T> bias(p.bias ? p.bias[k] : T(0));
      for (int i = 0; i < M; ++i) {
        for (int j = 0; j < M; ++j) (y[i][j] + bias).store(lanes[i][j]);
      }
      for (int64_t l = 0; l < V && patches[q + l].valid; ++l) {
        const TilePatch& t = patches[q + l];
        const int64_t oh0 = t.row0 + p.pad_h, ow0 = t.col0 + p.pad_w;
        T* dst = p.y.data + t.n * p.y.sn + k * p.y.sc;
        for (int i = 0; i < M && oh0 + i < p.out_h; ++i) {
          for (int j = 0; j < M && ow0 + j < p.out_w; ++j) dst[(oh0 + i) * p.y.sh + (ow0 + j) * p.y.sw] = lanes[i][j][l];
        }
      }
    }
  }
}

// FASTDL_WINOGRAD_SCHEDULE=staged or blocked overrides the forward's schedule (the tests use it to
// reach every path on small shapes); read on every call, since tests change it at run time.
std::string winograd_schedule() {
  const char* mode = std::getenv("FASTDL_WINOGRAD_SCHEDULE");
  return mode ? mode : "";
}

// The products of one xi for output blocks b, into transform_outputs' layout (geo's output stride
// alpha^2 x tb, tile vectors alpha^2 vectors apart; m points at this xi's vector): the sums over c of
// u[kb][c][j] v[c][tile] for output (kb - b.begin) * KT + j, for tb tiles (whole vectors; v's channel
// stride in geo).
template <typename T, int A>
void xi_products(const T* u, const T* v, T* m, Range b, int64_t C, int64_t tb, const TileGeometry& geo) {
  constexpr int64_t V = Vec<T>::size();
  for (int64_t kb = b.begin; kb < b.end; ++kb) {
    const T* w = u + kb * C * KT;
    for (int64_t q = 0, n = 0; q < tb; q += n * V) {
      n = tile_width<VT>(q / V, tb / V);
      const T* in[VT];
      T* out[VT];
      int64_t count[VT];
      for (int j = 0; j < n; ++j) {
        in[j] = v + q + j * V;
        out[j] = m + (kb - b.begin) * KT * geo.out_channel_stride + (q + j * V) * A * A;
        count[j] = V;
      }
      conv_tile_upto<T, KT, VT>(in, out, count, geo, w, TileInit::zero, nullptr, KT, int(n));
    }
  }
}

// Few tiles (small maps at small batches): each stage once over every tile, each in parallel on
// its own axis: input transforms over channels, products over (xi, output blocks), output
// transforms over output channels. The filters U (alpha^2 K C values: 37.7 MB for F4 at 512
// channels, more than the transformed tiles there) are then read once, where the blocked schedule
// below reads them once per block of tiles; the transformed tiles V and sums M go through memory
// instead of staying in L2, so this pays only while they are small (kStagedBytes).
template <typename T, int M, int R>
void winograd_conv_staged(const WinogradConv<T>& p, const T* filters, int64_t tiles) {
  constexpr int A = M + R - 1;
  constexpr int64_t V = Vec<T>::size();
  const int64_t C = p.channels, blocks = div_up(p.outs, KT), ks = blocks * KT;
  const int64_t tb = div_up(tiles, V) * V, cs = unaliased(tb, sizeof(T));
  std::vector<TilePatch> patches(tb);
  place_tiles<T, M>(p, 0, patches);
  std::vector<int64_t> offsets(C);
  for (int64_t c = 0; c < C; ++c) offsets[c] = c * cs;
  const TileGeometry geo{C, offsets.data(), A * A * tb, 1};
  Scratch<T> v_buffer(A * A * C * cs + V), m_buffer(A * A * ks * tb);
  T* v = v_buffer.get();
  T* m = m_buffer.get();
  at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) { transform_inputs<T, M, R>(p, patches, v, cs, {c0, c1}); });
  const int64_t kchunks = block_chunks(A * A, blocks);
  at::parallel_for(0, A * A * kchunks, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t xi = item / kchunks;
      const Range b = part_of(blocks, kchunks, item % kchunks);
      T* sums = m + b.begin * KT * A * A * tb + xi * V;
      xi_products<T, A>(filters + xi * blocks * C * KT, v + xi * C * cs, sums, b, C, tb, geo);
    }
  });
  at::parallel_for(0, p.outs, 1, [&](int64_t k0, int64_t k1) {
    transform_outputs<T, M, R>(p, patches, m + k0 * A * A * tb, k0, k1);
  });
}

template <typename T, int M, int R>
void winograd_conv(const WinogradConv<T>& p, const T* filters) {
  constexpr int A = M + R - 1;
  constexpr int64_t V = Vec<T>::size();
  const int64_t C = p.channels, blocks = div_up(p.outs, KT);
  const int64_t tiles = p.batch * div_up(p.out_h, M) * div_up(p.out_w, M), vectors = div_up(tiles, V);
  const std::string schedule = winograd_schedule();
  const bool few = A * A * (C + blocks * KT) * vectors * V * int64_t(sizeof(T)) <= kStagedBytes;
  if (schedule == "staged" || (few && schedule != "blocked")) {
    return winograd_conv_staged<T, M, R>(p, filters, tiles);
  }
  // Blocks of whole vectors of tiles, as equal as possible: few tiles (a small map at batch 1) then
  // fill their vectors, not a 24-tile register tile of mostly padding.
  const int64_t by_memory = std::max<int64_t>(VT, kBlockBytes / (A * A * C * int64_t(sizeof(T)) * V));
  const int64_t most = std::min(by_memory, div_up(vectors, at::get_num_threads()));
  const int64_t tb = div_up(vectors, div_up(vectors, most)) * V, tile_blocks = div_up(tiles, tb);
  const int64_t kchunks = block_chunks(tile_blocks, blocks), cs = unaliased(tb, sizeof(T));
  std::vector<int64_t> offsets(C);
  for (int64_t c = 0; c < C; ++c) offsets[c] = c * cs;
  const TileGeometry geo{C, offsets.data(), A * A * tb, 1};
  ThreadBuffers<T> v_buffers, m_buffers;
  at::parallel_for(0, tile_blocks * kchunks, 1, [&](int64_t i0, int64_t i1) {
    std::vector<TilePatch> patches(tb);
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t first = item / kchunks * tb;
      const Range b = part_of(blocks, kchunks, item % kchunks);
      place_tiles<T, M>(p, first, patches);
      T* v = v_buffers.get(A * A * C * cs + V);
      transform_inputs<T, M, R>(p, patches, v, cs, {0, C});
      const int64_t ks = (b.end - b.begin) * KT;
      T* m = m_buffers.get(A * A * ks * tb);
      for (int xi = 0; xi < A * A; ++xi) {
        xi_products<T, A>(filters + xi * blocks * C * KT, v + xi * C * cs, m + xi * V, b, C, tb, geo);
      }
      transform_outputs<T, M, R>(p, patches, m, b.begin * KT, std::min(p.outs, b.end * KT));
    }
  });
}

// ---- weight gradient ------------------------------------------------------------------------------------

// The R x R blocks of channels [c0, c0 + V) under one tile, starting at its patch origin plus (shift_h,
// shift_w) in planes of h x w, as vectors along the channels: lane l is channel c0 + l's block, zero
// outside the plane, for channels from `channels` on and for a padding tile.
template <int R, typename T>
void gather_channels(const Strided4d<const T>& x, const TilePatch& t, int64_t c0, int64_t channels, int64_t shift_h,
                     int64_t shift_w, int64_t h, int64_t w, Vec<T> (&d)[R][R]) {
  constexpr int64_t V = Vec<T>::size();
  const T* src[V];
  int64_t row0[V], col0[V];
  for (int64_t l = 0; l < V; ++l) {
    src[l] = t.valid && c0 + l < channels ? x.data + t.n * x.sn + (c0 + l) * x.sc : nullptr;
    row0[l] = t.row0 + shift_h;
    col0[l] = t.col0 + shift_w;
  }
  gather_lanes<R>(src, row0, col0, x.sh, x.sw, h, w, d);
}

// One block of tiles of the weight gradient, transformed with vectors along the channels: the inputs'
// B^T d B into vt[xi][tile][c] (row stride cs), grad_output's A dY A^T into dyt[xi][kb][tile][KT] (output
// channels in blocks of KT, as conv_tile reads packed weights).
template <typename T, int M, int R>
void transform_weight_grad_block(const WinogradConv<T>& p, const Strided4d<const T>& dy,
                                 const std::vector<TilePatch>& patches, T* vt, int64_t cs, T* dyt) {
  constexpr int A = M + R - 1;
  constexpr int64_t V = Vec<T>::size();
  const int64_t tb = int64_t(patches.size()), C = p.channels, K = p.outs, blocks = div_up(K, KT);
  // The inputs by ranges of tiles, each tile's row of every xi written whole; grad_output by vectors of
  // output channels, each block's tiles written in order.
  const int64_t cvectors = div_up(C, V), ranges = std::min(tb, 4 * int64_t(at::get_num_threads()));
  at::parallel_for(0, ranges + div_up(K, V), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      if (i < ranges) {
        const Range r = part_of(tb, ranges, i);
        for (int64_t t = r.begin; t < r.end; ++t) {
          for (int64_t c = 0; c < cvectors; ++c) {
            Vec<T> d[A][A], u[A][A];
            gather_channels<A>(p.x, patches[t], c * V, C, 0, 0, p.in_h, p.in_w, d);
            winograd_input_transform<M, T>(d, u);
            for (int xi = 0; xi < A * A; ++xi) u[xi / A][xi % A].store(vt + (xi * tb + t) * cs + c * V);
          }
        }
        continue;
      }
      const int64_t k0 = (i - ranges) * V;
      for (int64_t t = 0; t < tb; ++t) {
        Vec<T> d[M][M], u[A][A];
        gather_channels<M>(dy, patches[t], k0, K, p.pad_h, p.pad_w, p.out_h, p.out_w, d);
        winograd_grad_output_transform<M, T>(d, u);
        for (int xi = 0; xi < A * A; ++xi) {
          T lanes[V];
          u[xi / A][xi % A].store(lanes);
          for (int64_t kb = k0 / KT; kb < std::min(blocks, (k0 + V) / KT); ++kb) {
            std::copy(lanes + kb * KT - k0, lanes + kb * KT - k0 + KT, dyt + ((xi * blocks + kb) * tb + t) * KT);
          }
        }
      }
    }
  });
}

// grad_weight (K, C, R, R) of the convolution p (x = input, outs = K) given grad_output dy. The sums
// dU[xi][k][c] = sum over tiles of (A dY A^T)[xi][k] (B^T d B)[xi][c] are alpha^2 matrix products that
// reduce over the tiles, computed by the forward's conv_tile with vectors along the input channels c
// (KT output channels broadcast from dyt, VT vectors of channels, the tiles as the reduction steps): no
// horizontal sums, and the tiles' count does not have to fill vectors. Blocks of tiles
// (kWeightGradBlockBytes) are transformed, then summed into dU in parallel over (xi, range of channel
// vectors), each range's VT-vector groups meeting every output block over runs of tiles whose
// transformed inputs stay in L1; dU is written once per block. Then dW = G^T dU G, vectorized over (k, c).
template <typename T, int M, int R>
void winograd_weight_grad(const WinogradConv<T>& p, const Strided4d<const T>& dy, T* grad_weight) {
  constexpr int A = M + R - 1;
  constexpr int64_t V = Vec<T>::size();
  const int64_t C = p.channels, K = p.outs, blocks = div_up(K, KT), cvectors = div_up(C, V);
  const int64_t tiles = p.batch * div_up(p.out_h, M) * div_up(p.out_w, M);
  const int64_t cs = unaliased(cvectors * V, sizeof(T));
  const int64_t per_tile = A * A * (cs + blocks * KT) * int64_t(sizeof(T));
  const int64_t block_bytes =
      std::clamp<int64_t>(A * A * K * C * int64_t(sizeof(T)), kWeightGradBlockBytes / 16, kWeightGradBlockBytes);
  const int64_t most = std::clamp<int64_t>(block_bytes / per_tile, 1, tiles);  // tiles >= 1: batch > 0
  const int64_t tb = div_up(tiles, div_up(tiles, most));                       // equal blocks
  Scratch<T> vt(A * A * tb * cs + V), dyt(A * A * blocks * tb * KT), du(A * A * K * C);
  std::vector<TilePatch> patches;
  const int64_t cchunks = block_chunks(A * A, div_up(cvectors, VT));
  std::vector<int64_t> offsets(tb);
  for (int64_t t = 0; t < tb; ++t) offsets[t] = t * cs;
  for (int64_t first = 0; first < tiles; first += tb) {
    patches.resize(std::min(tb, tiles - first));
    place_tiles<T, M>(p, first, patches);
    transform_weight_grad_block<T, M, R>(p, dy, patches, vt.get(), cs, dyt.get());
    const int64_t count = int64_t(patches.size());
    // The reduction in runs whose transformed inputs (VT vectors a tile) stay in L1 across the output
    // blocks. Each run after the very first sums from zero into a register tile's worth of scratch that is
    // then added to dU: a float32 total carried through every tile (25088 of them) was 9e-5 of the
    // largest gradient away from float64, torch's 2e-5.
    const int64_t runs = div_up(count, kWeightGradRunBytes / (VT * V * int64_t(sizeof(T))));
    at::parallel_for(0, A * A * cchunks, 1, [&](int64_t i0, int64_t i1) {
      alignas(64) T part[KT * VT * V];
      for (int64_t item = i0; item < i1; ++item) {
        const int64_t xi = item / cchunks;
        const Range r = part_of(cvectors, cchunks, item % cchunks);
        for (int64_t run = 0; run < runs; ++run) {
          const Range steps = part_of(count, runs, run);
          const bool first_run = first == 0 && run == 0;
          const TileGeometry geo{steps.end - steps.begin, offsets.data(), first_run ? C : VT * V, 1};
          for (int64_t q = r.begin, n = 0; q < r.end; q += n) {
            n = tile_width<VT>(q - r.begin, r.end - r.begin);
            const T* in[VT];
            T *out[VT], *sums[VT];
            int64_t channels[VT];
            for (int j = 0; j < n; ++j) {
              in[j] = vt.get() + (xi * count + steps.begin) * cs + (q + j) * V;
              channels[j] = std::min(V, C - (q + j) * V);
            }
            for (int64_t kb = 0; kb < blocks; ++kb) {
              const int64_t kvalid = std::min<int64_t>(KT, K - kb * KT);
              for (int j = 0; j < n; ++j) {
                sums[j] = du.get() + (xi * K + kb * KT) * C + (q + j) * V;
                out[j] = first_run ? sums[j] : part + j * V;
              }
              const T* w = dyt.get() + ((xi * blocks + kb) * count + steps.begin) * KT;
              conv_tile_upto<T, KT, VT>(in, out, channels, geo, w, TileInit::zero, nullptr, kvalid, int(n));
              if (first_run) continue;
              for (int64_t k = 0; k < kvalid; ++k) {
                for (int j = 0; j < n; ++j) {
                  T* dst = sums[j] + k * C;
                  const Vec<T> total = Vec<T>::loadu(dst, channels[j]) + Vec<T>::loadu(part + k * VT * V + j * V);
                  total.store(dst, channels[j]);
                }
              }
            }
          }
        }
      }
    });
  }
  at::parallel_for(0, div_up(K * C, V), 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0 * V; i < std::min(K * C, i1 * V); i += V) {
      const int64_t n = std::min(V, K * C - i);
      Vec<T> u[A][A], g[R][R];
      for (int xi = 0; xi < A * A; ++xi) u[xi / A][xi % A] = Vec<T>::loadu(du.get() + xi * K * C + i, n);
      winograd_filter_grad_transform<M, T>(u, g);
      T lanes[R * R][V];
      for (int r = 0; r < R * R; ++r) g[r / R][r % R].store(lanes[r]);
      for (int64_t l = 0; l < n; ++l) {
        for (int r = 0; r < R * R; ++r) grad_weight[(i + l) * R * R + r] = lanes[r][l];
      }
    }
  });
}

// Calls f(M, R) with the tile and the filter size as compile-time constants: F(2x2,3x3), F(4x4,3x3) or
// F(2x2,5x5) (WinogradOps::problem admits only those).
template <typename F>
void with_algorithm(int64_t tile, int64_t kernel, const F& f) {
  if (kernel == 5) {
    f(std::integral_constant<int, 2>(), std::integral_constant<int, 5>());
  } else if (tile == 2) {
    f(std::integral_constant<int, 2>(), std::integral_constant<int, 3>());
  } else {
    f(std::integral_constant<int, 4>(), std::integral_constant<int, 3>());
  }
}

template <typename T>
void run(const WinogradConv<T>& p, const T* weight, bool transposed, int64_t tile, int64_t kernel) {
  with_algorithm(tile, kernel, [&](auto m, auto r) {
    winograd_conv<T, m, r>(p, transform_filters<T, m, r>(weight, p.outs, p.channels, transposed));
  });
}

struct CpuWinograd {
  static constexpr bool kReducedPrecision = false;
  static constexpr bool kFiveByFive = true;

  static void winograd_forward(const Conv2dForward& f, int64_t tile) {
    const Conv2dShape& s = f.shape;
    AT_DISPATCH_FLOATING_TYPES(f.input.scalar_type(), "fastdl.conv2d_winograd", [&] {
      const WinogradConv<scalar_t> p{strided<const scalar_t>(f.input),
                                     strided<scalar_t>(f.output),
                                     s.batch,
                                     s.in_channels,
                                     s.in_h,
                                     s.in_w,
                                     s.out_channels,
                                     s.out_h,
                                     s.out_w,
                                     s.pad_h,
                                     s.pad_w,
                                     f.bias.defined() ? f.bias.const_data_ptr<scalar_t>() : nullptr};
      run(p, f.weight.const_data_ptr<scalar_t>(), false, tile, s.kernel_h);
    });
  }

  // Winograd's weight gradient (channel-vector form) pays by the multiply-adds it saves per sum of dU:
  // direct r^2 x outputs per (k, c) pair against alpha^2 x tiles, while each of the alpha^2 sums costs a
  // read, a write and the final transform. Training steps (forward+backward, interleaved, never / auto):
  // 147 or more saved per sum 1.03-1.44x (VGG-16 and ResNet-50 from 28x28 at batch 1, 14x14 at batch
  // 8), 46-66 0.92-1.0x (F2 on 13x13 and 14x14 at batch 1, F4 on 7x7 at batch 8; on its own the
  // weight gradient measured 1.02-1.37x there, but not next to the forward's data). Also against it:
  // sums beyond the caches (2048 channels: 0.63x) and few channels (3 -> 64: 0.17x; F2 under 128
  // channels 0.72-0.82x). bench/NOTES.md, Winograd 9. F(2x2,5x5) (Winograd 10): 0.91-1.07x the direct
  // kernel's time on AlexNet's 64 -> 192 layer at batch 1-32 (0.94x in 4 of 6 runs), 0.79x on 64 -> 128
  // (28x28), but 1.0-2.3x with 16-48 channels (GoogLeNet's 5x5 branches): 64+ channels.
  static bool winograd_grad_weight(const Conv2dBackward& b, int64_t tile) {
    const Conv2dShape& s = b.shape;
    const int64_t alpha2 = (tile + s.kernel_h - 1) * (tile + s.kernel_h - 1);
    const int64_t tiles = s.batch * div_up(s.out_h, tile) * div_up(s.out_w, tile);
    const int64_t saved_per_sum = (s.taps() * s.batch * s.out_h * s.out_w - alpha2 * tiles) / alpha2;
    const int64_t sums_bytes = alpha2 * s.in_channels * s.out_channels * b.input.element_size();
    const bool pays = saved_per_sum >= 100 && sums_bytes <= 2 * kWeightGradBlockBytes &&
                      std::min(s.in_channels, s.out_channels) >= (s.kernel_h == 5 ? 64 : tile == 4 ? 16 : 128);
    if (!winograd_weight_grad_wanted(pays)) return false;
    AT_DISPATCH_FLOATING_TYPES(b.input.scalar_type(), "fastdl.conv2d_winograd_backward", [&] {
      const WinogradConv<scalar_t> p{strided<const scalar_t>(b.input), {}, s.batch, s.in_channels, s.in_h, s.in_w,
                                     s.out_channels, s.out_h, s.out_w, s.pad_h, s.pad_w, nullptr};
      const auto dy = strided<const scalar_t>(b.grad_output);
      scalar_t* dw = b.grad_weight.data_ptr<scalar_t>();
      with_algorithm(tile, s.kernel_h, [&](auto m, auto r) { winograd_weight_grad<scalar_t, m, r>(p, dy, dw); });
    });
    return true;
  }

  // The input gradient: grad_output padded by R - 1 - padding, the filters rotated and transposed.
  static void winograd_grad_input(const Conv2dBackward& b, int64_t tile) {
    const Conv2dShape& s = b.shape;
    AT_DISPATCH_FLOATING_TYPES(b.grad_output.scalar_type(), "fastdl.conv2d_winograd_backward", [&] {
      const WinogradConv<scalar_t> p{strided<const scalar_t>(b.grad_output),
                                     strided<scalar_t>(b.grad_input),
                                     s.batch,
                                     s.out_channels,
                                     s.out_h,
                                     s.out_w,
                                     s.in_channels,
                                     s.in_h,
                                     s.in_w,
                                     s.kernel_h - 1 - s.pad_h,
                                     s.kernel_w - 1 - s.pad_w,
                                     nullptr};
      run(p, b.weight.const_data_ptr<scalar_t>(), true, tile, s.kernel_h);
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, CPU, m) { WinogradOps<CpuWinograd>::define_kernels(m); }

}  // namespace fastdl
