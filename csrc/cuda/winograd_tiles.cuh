#pragma once
// What the two CUDA Winograd forward paths share (winograd_kernels.cu: transforms and a batched GEMM
// through workspaces; winograd_fused.cu: one kernel per call): the tile numbering, a tile's input
// patch and output block, the filter transform, the element-wise kernel that runs per-item work, the
// dtype/index/layout/tile dispatch and the index-width check. Everything per item is
// __host__ __device__, so that the host emulations run the same code.
//
// Tiles (m x m blocks of one image's outputs) are numbered over the batch, then tile rows, then tile
// columns.

#include <type_traits>

#include "common/winograd.h"
#include "cuda/device_utils.cuh"
#include "cuda/winograd_kernels.h"

namespace fastdl::cuda::winograd_detail {

// Threads of the element-wise kernels (and of the batched GEMM).
constexpr int kThreads = 256;

// Four elements read from shared memory as one vector (16 bytes for float; two loads for double).
template <typename A>
struct alignas(16) Quad {
  A v[4];
};

template <typename I>
struct Geometry {
  I batch, channels, in_h, in_w, outs, out_h, out_w, pad_h, pad_w;
  I tiles_h, tiles_w;  // per image
};

// Tiles of m outputs along an axis of n outputs (the last one may overhang).
inline int64_t tiles_along(int64_t n, int m) { return (n + m - 1) / m; }

// A call's sizes in the kernels' index type.
template <typename I>
Geometry<I> geometry(const WinogradSizes& s, int m) {
  return {I(s.batch), I(s.channels), I(s.in_h),  I(s.in_w),  I(s.outs),
          I(s.out_h), I(s.out_w),    I(s.pad_h), I(s.pad_w), I(tiles_along(s.out_h, m)),
          I(tiles_along(s.out_w, m))};
}

inline int64_t tile_count(const WinogradSizes& s, int m) {
  return s.batch * tiles_along(s.out_h, m) * tiles_along(s.out_w, m);
}

// Whether every index of a call fits int32: the activations' elements, the workspace's elements (the
// largest region), the tiles, the patch positions (the padding may be large or negative) and the weight.
inline bool fits_narrow(const WinogradSizes& s, int m, int64_t workspace_elements, Execution execution) {
  const int64_t tiles = tile_count(s, m);
  int64_t largest = max_of(max_of(s.batch * s.channels * s.in_h * s.in_w, s.batch * s.outs * s.out_h * s.out_w),
                           max_of(workspace_elements, tiles));
  const auto magnitude = [](int64_t x) { return x < 0 ? -x : x; };
  largest = max_of(largest, s.in_h + s.out_h + magnitude(s.pad_h) + 2 * m + 2);
  largest = max_of(largest, s.in_w + s.out_w + magnitude(s.pad_w) + 2 * m + 2);
  largest = max_of(largest, s.outs * s.channels * 9);  // the weight (gradient)
  return fits_int32(largest) && execution != Execution::host_int64;
}

template <typename I>
struct TileOrigin {
  I n, oh, ow;  // image, first output row and column
};

template <int M, typename I>
FASTDL_HOST_DEVICE TileOrigin<I> tile_origin(const Geometry<I>& g, I tile) {
  const I per_image = g.tiles_h * g.tiles_w, n = tile / per_image, rest = tile - n * per_image;
  const I th = rest / g.tiles_w;
  return {n, th * M, (rest - th * g.tiles_w) * M};
}

// Item e of a (channel, tile) grid as (c, t), ordered so that neighbouring threads touch neighbouring
// memory: tiles fastest for N,C,H,W (a row of tiles), channels fastest for N,H,W,C.
template <Layout L, typename I>
FASTDL_HOST_DEVICE void split_item(I e, I channels, I count, I& c, I& t) {
  if constexpr (L == Layout::nchw) {
    c = e / count;
    t = e - c * count;
  } else {
    t = e / channels;
    c = e - t * channels;
  }
}

// The alpha x alpha input patch of channel c under the tile at o (zero outside the image).
template <typename T, typename I, Layout L, int M>
FASTDL_HOST_DEVICE void load_patch(const T* x, const Geometry<I>& g, const TileOrigin<I>& o, I c,
                                   Acc<T> (&d)[M + 2][M + 2]) {
  const I row0 = o.oh - g.pad_h, col0 = o.ow - g.pad_w;
  FASTDL_UNROLL
  for (int i = 0; i < M + 2; ++i) {
    const I ih = row0 + i;
    FASTDL_UNROLL
    for (int j = 0; j < M + 2; ++j) {
      const I iw = col0 + j;
      const bool inside = ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
      const I at = L == Layout::nchw ? ((o.n * g.channels + c) * g.in_h + ih) * g.in_w + iw
                                     : ((o.n * g.in_h + ih) * g.in_w + iw) * g.channels + c;
      d[i][j] = inside ? read(x, at) : Acc<T>(0);
    }
  }
}

// The offset of output pixel (oh, ow) of channel k of image n.
template <Layout L, typename I>
FASTDL_HOST_DEVICE I output_at(const Geometry<I>& g, I n, I k, I oh, I ow) {
  return L == Layout::nchw ? ((n * g.outs + k) * g.out_h + oh) * g.out_w + ow
                           : ((n * g.out_h + oh) * g.out_w + ow) * g.outs + k;
}

// Output channel k of the tile at o: the m x m block of a tensor shaped like the output (grad_output),
// zero where the tile overhangs the image (those outputs were never written).
template <typename T, typename I, Layout L, int M>
FASTDL_HOST_DEVICE void load_block(const T* y, const Geometry<I>& g, const TileOrigin<I>& o, I k,
                                   Acc<T> (&block)[M][M]) {
  FASTDL_UNROLL
  for (int i = 0; i < M; ++i) {
    const I oh = o.oh + i;
    FASTDL_UNROLL
    for (int j = 0; j < M; ++j) {
      const I ow = o.ow + j;
      block[i][j] = oh < g.out_h && ow < g.out_w ? read(y, output_at<L>(g, o.n, k, oh, ow)) : Acc<T>(0);
    }
  }
}

// Output channel k of the tile at o: the m x m block out + bias, the pixels inside the image (the
// last tile row or column overhangs it).
template <typename T, typename I, Layout L, int M>
FASTDL_HOST_DEVICE void store_block(T* y, const Geometry<I>& g, const TileOrigin<I>& o, I k,
                                    const Acc<T> (&out)[M][M], Acc<T> bias) {
  FASTDL_UNROLL
  for (int i = 0; i < M; ++i) {
    const I oh = o.oh + i;
    FASTDL_UNROLL
    for (int j = 0; j < M; ++j) {
      const I ow = o.ow + j;
      if (oh < g.out_h && ow < g.out_w) write(y, output_at<L>(g, o.n, k, oh, ow), out[i][j] + bias);
    }
  }
}

// A work type has Index, items() and operator()(e) for e < items(); elementwise_kernel runs it.

// Item e = (k, c), c fastest. Computed in double: G's 1/6, 1/12 and 1/24 would round in float, and
// the filters are transformed once per call. U is [alpha^2][outs][channels] (the GEMM's rows are the
// outputs), or [alpha^2][channels][outs] with by_channel (the fused kernel's slices of channels).
template <typename T, typename I, int M>
struct FilterTransform {
  using Index = I;
  const T* w;
  Acc<T>* u;
  I outs, channels;
  bool transposed;  // w is (channels, outs, 3, 3), rotated (the input gradient)
  bool by_channel = false;

  FASTDL_HOST_DEVICE I items() const { return outs * channels; }
  FASTDL_HOST_DEVICE void operator()(I e) const {
    constexpr int A = M + 2;
    const I k = e / channels, c = e - k * channels;
    double g[3][3], v[A][A];
    FASTDL_UNROLL
    for (int r = 0; r < 3; ++r) {
      FASTDL_UNROLL
      for (int s = 0; s < 3; ++s) {
        const I at = transposed ? (c * outs + k) * 9 + (2 - r) * 3 + (2 - s) : (k * channels + c) * 9 + r * 3 + s;
        g[r][s] = double(read(w, at));
      }
    }
    winograd_filter_transform<M, double>(g, v);
    FASTDL_UNROLL
    for (int xi = 0; xi < A * A; ++xi) {
      const I at = by_channel ? (I(xi) * channels + c) * outs + k : (I(xi) * outs + k) * channels + c;
      u[at] = Acc<T>(v[xi / A][xi % A]);
    }
  }
};

template <typename Work>
__global__ void __launch_bounds__(kThreads) elementwise_kernel(const Work work) {
  using I = typename Work::Index;
  const I items = work.items();
  for (I e = global_thread<I>(); e < items; e += grid_threads<I>()) work(e);
}

template <typename Work>
void launch_elementwise(const Work& work, cudaStream_t stream) {
  const int64_t items = int64_t(work.items());
  if (items == 0) return;
  elementwise_kernel<Work><<<grid_blocks(items, kThreads), kThreads, 0, stream>>>(work);
}

template <typename Work>
void emulate_elementwise(const Work& work) {
  for (typename Work::Index e = 0; e < work.items(); ++e) work(e);
}

template <int M>
using TileTag = std::integral_constant<int, M>;

// Runs body(TypeTag<T>, TypeTag<I>, LayoutTag<L>, TileTag<M>); the host emulations take float and
// double only (kEmulated: the others are not instantiated for the host).
template <bool kEmulated, typename Args, typename Body>
cudaError_t dispatch(const Args& a, bool narrow, Body&& body) {
  return dispatch_dtype(a.dtype, [&](auto t) {
    using T = typename decltype(t)::type;
    if constexpr (kEmulated && !std::is_floating_point_v<T>) {
      return cudaErrorNotSupported;
    } else {
      return dispatch_index(narrow, [&](auto i) {
        return dispatch_layout(a.layout, [&](auto l) {
          return a.tile == 4 ? body(t, i, l, TileTag<4>{}) : body(t, i, l, TileTag<2>{});
        });
      });
    }
  });
}

}  // namespace fastdl::cuda::winograd_detail
