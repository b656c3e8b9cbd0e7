// CPU kernels of Winograd convolution F(m x m, 3x3), m = 2 or 4 (float32, float64): the forward and
// the input gradient (the transforms and their algebra are in common/winograd.h).
//
// Output tiles (m x m blocks of one image's outputs) are numbered over the batch and taken in
// blocks of a few dozen, so that memory stays bounded whatever the batch. A work item is (a block
// of tiles, a range of output-channel blocks): it transforms its tiles' input patches over every
// channel into V[xi][c][tile] (vectors along tiles: 8 float32 tiles are transformed at once), does
// the alpha^2 matrix products M[xi][k][tile] = sum_c U[xi][k][c] V[xi][c][tile] with the direct
// convolution's register tile (conv_tile: 4 output channels x 3 vectors of tiles, the filters
// packed [xi][block][c][4]), then transforms M back into m x m outputs, adds the bias and writes
// the pixels that lie inside the image. The filters are transformed once per call, in double.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/winograd.h"
#include "common/winograd_ops.h"
#include "cpu/conv2d_tiles.h"
#include "cpu/work_split.h"

namespace fastdl {
namespace {

constexpr int KT = 4;                          // output channels per register tile
constexpr int VT = 3;                          // vectors of tiles per register tile
constexpr int64_t kBlockBytes = 1024 * 1024;  // transformed inputs of one block of tiles

// One Winograd convolution as the kernels see it: output (n, k, oh, ow) is bias[k] plus the sum over
// c < channels and r, s < 3 of filter[k][c][r][s] * x[n][c][oh - pad_h + r][ow - pad_w + s], x zero
// outside [0, in_h) x [0, in_w). The padding may be negative (the input gradient's, for padding > 2).
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
// on every call). w is (outs, reds, 3, 3), or with `transposed` (reds, outs, 3, 3) rotated by 180
// degrees. Computed in double, a vector of consecutive outputs at a time, so that each store fills
// whole runs of KT outputs.
template <typename T, int M>
const T* transform_filters(const T* w, int64_t outs, int64_t reds, bool transposed) {
  constexpr int A = M + 2;
  using D = Vec<double>;
  constexpr int64_t L = D::size();
  static_assert(L % KT == 0, "a vector of outputs holds whole blocks");
  const int64_t blocks = div_up(outs, KT), padded = blocks * KT;
  thread_local std::vector<T> packed;
  packed.resize(std::max<size_t>(packed.size(), A * A * padded * reds));
  T* dst = packed.data();
  at::parallel_for(0, div_up(padded, L), 1, [&](int64_t g0, int64_t g1) {
    for (int64_t o0 = g0 * L; o0 < g1 * L; o0 += L) {
      for (int64_t c = 0; c < reds; ++c) {
        double lanes[3][3][L];
        for (int64_t j = 0; j < L; ++j) {
          const int64_t o = o0 + j;
          for (int r = 0; r < 3; ++r) {
            for (int s = 0; s < 3; ++s) {
              lanes[r][s][j] = o >= outs   ? 0.0
                               : transposed ? double(w[(c * outs + o) * 9 + (2 - r) * 3 + (2 - s)])
                                            : double(w[(o * reds + c) * 9 + r * 3 + s]);
            }
          }
        }
        D g[3][3], u[A][A];
        for (int r = 0; r < 3; ++r) {
          for (int s = 0; s < 3; ++s) g[r][s] = D::loadu(lanes[r][s]);
        }
        winograd_filter_transform<M, double>(g, u);
        for (int xi = 0; xi < A * A; ++xi) {
          double out[L];
          u[xi / A][xi % A].store(out);
          for (int64_t j = 0; j < L && o0 + j < padded; ++j) {
            const int64_t o = o0 + j;
            dst[((xi * blocks + o / KT) * reds + c) * KT + o % KT] = T(out[j]);
          }
        }
      }
    }
  });
  return dst;
}

// Where the patch of each tile of a block starts, and whether it lies inside the image.
struct TilePatch {
  int64_t n, row0, col0;
  bool inside, valid;  // valid: a tile of the convolution (blocks are padded to whole register tiles)
};

template <typename T, int M>
void transform_inputs(const WinogradConv<T>& p, const std::vector<TilePatch>& patches, T* v, int64_t cs) {
  constexpr int A = M + 2;
  constexpr int64_t V = Vec<T>::size();
  const int64_t tb = int64_t(patches.size()), C = p.channels;
  for (int64_t c = 0; c < C; ++c) {
    const T* plane = p.x.data + c * p.x.sc;
    for (int64_t q = 0; q < tb; q += V) {
      T lanes[A][A][V];
      for (int64_t l = 0; l < V; ++l) {
        const TilePatch& t = patches[q + l];
        const T* src = plane + t.n * p.x.sn;
        for (int i = 0; i < A; ++i) {
          const int64_t ih = t.row0 + i;
          const bool row_in = t.valid && ih >= 0 && ih < p.in_h;
          for (int j = 0; j < A; ++j) {
            const int64_t iw = t.col0 + j;
            const bool in = t.inside || (row_in && iw >= 0 && iw < p.in_w);
            lanes[i][j][l] = in ? src[ih * p.x.sh + iw * p.x.sw] : T(0);
          }
        }
      }
      Vec<T> d[A][A], u[A][A];
      for (int i = 0; i < A; ++i) {
        for (int j = 0; j < A; ++j) d[i][j] = Vec<T>::loadu(lanes[i][j]);
      }
      winograd_input_transform<M, T>(d, u);
      for (int xi = 0; xi < A * A; ++xi) u[xi / A][xi % A].store(v + (xi * C + c) * cs + q);
    }
  }
}

// m x m outputs per tile of output channels [k0, k1) from the sums m_buf[xi][k - k0][tile].
template <typename T, int M>
void transform_outputs(const WinogradConv<T>& p, const std::vector<TilePatch>& patches, const T* m_buf,
                       int64_t k0, int64_t k1, int64_t ks) {
  constexpr int A = M + 2;
  constexpr int64_t V = Vec<T>::size();
  const int64_t tb = int64_t(patches.size());
  for (int64_t k = k0; k < k1; ++k) {
    for (int64_t q = 0; q < tb; q += V) {
      Vec<T> m[A][A], y[M][M];
      for (int xi = 0; xi < A * A; ++xi) m[xi / A][xi % A] = Vec<T>::loadu(m_buf + (xi * ks + k - k0) * tb + q);
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

template <typename T, int M>
void winograd_conv(const WinogradConv<T>& p, const T* filters) {
  constexpr int A = M + 2;
  constexpr int64_t V = Vec<T>::size(), group = VT * V;
  const int64_t C = p.channels, blocks = div_up(p.outs, KT);
  const int64_t tiles_h = div_up(p.out_h, M), tiles_w = div_up(p.out_w, M);
  const int64_t tiles = p.batch * tiles_h * tiles_w;
  const int64_t by_memory = std::max<int64_t>(1, kBlockBytes / (A * A * C * int64_t(sizeof(T))) / group);
  const int64_t by_threads = div_up(div_up(tiles, at::get_num_threads()), group);
  const int64_t tb = std::min(by_memory, by_threads) * group, tile_blocks = div_up(tiles, tb);
  const int64_t kchunks = block_chunks(tile_blocks, blocks), cs = unaliased(tb, sizeof(T));
  std::vector<int64_t> offsets(C);
  for (int64_t c = 0; c < C; ++c) offsets[c] = c * cs;
  const TileGeometry geo{C, offsets.data(), tb, 1};
  ThreadBuffers<T> v_buffers, m_buffers;
  at::parallel_for(0, tile_blocks * kchunks, 1, [&](int64_t i0, int64_t i1) {
    std::vector<TilePatch> patches(tb);
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t first = item / kchunks * tb;
      const Range b = part_of(blocks, kchunks, item % kchunks);
      for (int64_t l = 0; l < tb; ++l) {
        const int64_t t = first + l, tw = t % tiles_w, th = t / tiles_w % tiles_h;
        TilePatch& patch = patches[l];
        patch = {t / (tiles_w * tiles_h), th * M - p.pad_h, tw * M - p.pad_w, false, t < tiles};
        patch.inside = patch.valid && patch.row0 >= 0 && patch.row0 + A <= p.in_h && patch.col0 >= 0 &&
                       patch.col0 + A <= p.in_w;
        if (!patch.valid) patch.n = 0;
      }
      T* v = v_buffers.get(A * A * C * cs + V);
      transform_inputs<T, M>(p, patches, v, cs);
      const int64_t ks = (b.end - b.begin) * KT;
      T* m = m_buffers.get(A * A * ks * tb);
      for (int xi = 0; xi < A * A; ++xi) {
        for (int64_t kb = b.begin; kb < b.end; ++kb) {
          const T* w = filters + (xi * blocks + kb) * C * KT;
          for (int64_t q = 0; q < tb; q += group) {
            const T* in[VT];
            T* out[VT];
            int64_t count[VT];
            for (int j = 0; j < VT; ++j) {
              in[j] = v + xi * C * cs + q + j * V;
              out[j] = m + (xi * ks + (kb - b.begin) * KT) * tb + q + j * V;
              count[j] = V;
            }
            conv_tile<T, KT, VT>(in, out, count, geo, w, TileInit::zero, nullptr, KT);
          }
        }
      }
      transform_outputs<T, M>(p, patches, m, b.begin * KT, std::min(p.outs, b.end * KT), ks);
    }
  });
}

template <typename T>
void run(const WinogradConv<T>& p, const T* weight, bool transposed, int64_t tile) {
  if (tile == 2) {
    winograd_conv<T, 2>(p, transform_filters<T, 2>(weight, p.outs, p.channels, transposed));
  } else {
    winograd_conv<T, 4>(p, transform_filters<T, 4>(weight, p.outs, p.channels, transposed));
  }
}

struct CpuWinograd {
  static constexpr bool kReducedPrecision = false;

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
      run(p, f.weight.const_data_ptr<scalar_t>(), false, tile);
    });
  }

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
                                     2 - s.pad_h,
                                     2 - s.pad_w,
                                     nullptr};
      run(p, b.weight.const_data_ptr<scalar_t>(), true, tile);
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, CPU, m) { WinogradOps<CpuWinograd>::define_kernels(m); }

}  // namespace fastdl
