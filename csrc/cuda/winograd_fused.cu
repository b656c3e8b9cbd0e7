// The fused CUDA Winograd convolution F(m x m, 3x3), m = 2 or 4 (the forward and the input gradient;
// winograd_kernels.h states the function). After the filter transform (winograd_tiles.cuh,
// U[xi][c][k] = (G g[k][c] G^T)[xi] in the workspace, once per call) one kernel computes the output:
// no transformed tile or product goes through global memory, and the workspace is U alone.
//
// A block owns TB consecutive tiles x KB output channels, at all alpha^2 positions xi. It walks the
// input channels in slices of CB:
//
//   stage     one thread per (channel, tile) of the slice loads the tile's alpha x alpha patch,
//             transforms it (B^T d B) and stores Vs[xi][c][t] in shared memory; all threads copy U's
//             slice to Us[xi][c][k]. Zeros past the channels and the tiles.
//   multiply  a thread owns one position xi, an output group o and a tile group g, and accumulates in
//             registers acc[i][j] += Us[xi][c][o KR + i] Vs[xi][c][g TR + j] (16-byte shared reads)
//
// with a barrier after each. Then, in rounds of two of each thread's KR rows (the shared memory of a
// slice holds two), the rows go to shared memory Ms[xi][row][t], and one thread per (row, tile)
// applies the output transform (A^T M A + bias) and stores the pixels inside the image.
//
// Shapes (FusedShape): F(2x2,3x3) 256 threads, 16 per position, a block of 32 outputs x 32 tiles;
// F(4x4,3x3) 288 threads, 8 per position, 16 outputs x 32 tiles. Each thread holds 8 x 8 sums. ptxas
// (sm_90, float, int32 indices): 123-124 registers for F(2x2) (two blocks per SM), 133-167 for F(4x4)
// (one: its 9 warps put 3 on one SM sub-partition, which caps them at 168 registers; 32 outputs per
// block spilled there), no spills. Slices of 8 (F(2x2)) or 4 (F(4x4)) channels, half that in
// double, keep the shared memory under 48 KB. Every tile's patch is loaded and transformed once per
// block of outputs (K / KB times per call), against once per call in the staged path: the price of
// keeping V on chip.
//
// The thread phases are __host__ __device__: the host emulation runs every block's threads one after
// another through each phase between two barriers (races are not detected; every index and bound is).

#include "cuda/winograd_fused.h"

#include <memory>
#include <vector>

#include "cuda/winograd_tiles.cuh"

namespace fastdl::cuda {
namespace {

using namespace winograd_detail;

template <int M, typename Ac>
struct FusedShape {
  static constexpr int A = M + 2, P = A * A;
  static constexpr int kThreads = M == 2 ? 256 : 288;
  static constexpr int KB = M == 2 ? 32 : 16, TB = 32;  // outputs and tiles of a block
  static constexpr int CB = (M == 2 ? 8 : 4) / (sizeof(Ac) == 4 ? 1 : 2);  // channels of a slice
  static constexpr int KR = 8, TR = 8;                                      // a thread's block of sums
  static constexpr int kOutGroups = KB / KR, kTileGroups = TB / TR, kPerPosition = kThreads / P;
  static constexpr int kRoundRows = 2, kRounds = KR / kRoundRows, kRoundOuts = kRoundRows * kOutGroups;
  static constexpr int kPad = 4;  // rows stay 16-byte aligned; column-wise stores spread over banks
  static_assert(kPerPosition * P == kThreads && kOutGroups * kTileGroups == kPerPosition, "one thread per block");
  static_assert(CB * TB <= kThreads && kRoundOuts * TB <= kThreads, "one patch and one output per thread");
  static_assert(KR % 4 == 0 && TR % 4 == 0 && KR % kRoundRows == 0, "whole vectors, whole rounds");
};

template <int M, typename Ac>
struct FusedShared {
  using S = FusedShape<M, Ac>;
  struct Slice {
    alignas(16) Ac v[S::P][S::CB][S::TB + S::kPad];
    alignas(16) Ac u[S::P][S::CB][S::KB + S::kPad];
  };
  union {
    Slice slice;
    alignas(16) Ac m[S::P][S::kRoundOuts][S::TB + S::kPad];
  };
};

template <typename I>
struct FusedBlock {
  I t0, k0;  // first tile, first output channel
};

template <typename T_, typename I_, Layout L_, int M_>
struct FusedWork {
  using T = T_;
  using I = I_;
  using Ac = Acc<T>;
  static constexpr Layout L = L_;
  static constexpr int M = M_;
  using S = FusedShape<M, Ac>;
  using Shared = FusedShared<M, Ac>;

  const T* x;
  const Ac* u;     // [alpha^2][channels][outs]
  const T* bias;   // outs values, or null
  T* y;
  Geometry<I> g;
  I tiles;         // over the batch
  int64_t out_blocks, blocks;

  // Blocks with neighbouring indices share their tiles (the patches come from L2 the second time).
  FASTDL_HOST_DEVICE FusedBlock<I> block(int64_t index) const {
    const int64_t tb = index / out_blocks;
    return {I(tb * S::TB), I((index - tb * out_blocks) * S::KB)};
  }
};

template <typename W>
struct FusedThread {
  using I = typename W::I;
  using Ac = typename W::Ac;
  using S = typename W::S;
  static constexpr int A = S::A, M = W::M;

  int t;
  Ac acc[S::KR][S::TR];

  FASTDL_HOST_DEVICE int position() const { return t / S::kPerPosition; }
  FASTDL_HOST_DEVICE int out_group() const { return t % S::kPerPosition / S::kTileGroups; }
  FASTDL_HOST_DEVICE int tile_group() const { return t % S::kTileGroups; }

  FASTDL_HOST_DEVICE void begin() {
    FASTDL_UNROLL
    for (int i = 0; i < S::KR; ++i) {
      FASTDL_UNROLL
      for (int j = 0; j < S::TR; ++j) acc[i][j] = Ac(0);
    }
  }

  FASTDL_HOST_DEVICE void stage(const W& w, const FusedBlock<I>& b, I c0, typename W::Shared& sh) const {
    if (t < S::CB * S::TB) {
      I c, tt;
      split_item<W::L>(I(t), I(S::CB), I(S::TB), c, tt);
      const I channel = c0 + c, tile = b.t0 + tt;
      Ac v[A][A];
      if (channel < w.g.channels && tile < w.tiles) {
        Ac d[A][A];
        load_patch<typename W::T, I, W::L, M>(w.x, w.g, tile_origin<M>(w.g, tile), channel, d);
        winograd_input_transform<M, Ac>(d, v);
      } else {
        FASTDL_UNROLL
        for (int xi = 0; xi < A * A; ++xi) v[xi / A][xi % A] = Ac(0);
      }
      FASTDL_UNROLL
      for (int xi = 0; xi < A * A; ++xi) sh.slice.v[xi][c][tt] = v[xi / A][xi % A];
    }
    for (int e = t; e < S::P * S::CB * S::KB; e += S::kThreads) {
      const int xi = e / (S::CB * S::KB), rest = e - xi * (S::CB * S::KB), c = rest / S::KB, k = rest - c * S::KB;
      const I channel = c0 + c, out = b.k0 + k;
      sh.slice.u[xi][c][k] = channel < w.g.channels && out < w.g.outs
                                 ? read(w.u, (I(xi) * w.g.channels + channel) * w.g.outs + out)
                                 : Ac(0);
    }
  }

  FASTDL_HOST_DEVICE void multiply(const typename W::Shared& sh) {
    const int xi = position(), k = out_group() * S::KR, n = tile_group() * S::TR;
    for (int c = 0; c < S::CB; ++c) {
      Ac a[S::KR], v[S::TR];
      FASTDL_UNROLL
      for (int q = 0; q < S::KR / 4; ++q) {
        const Quad<Ac> four = *reinterpret_cast<const Quad<Ac>*>(&sh.slice.u[xi][c][k + 4 * q]);
        FASTDL_UNROLL
        for (int i = 0; i < 4; ++i) a[4 * q + i] = four.v[i];
      }
      FASTDL_UNROLL
      for (int q = 0; q < S::TR / 4; ++q) {
        const Quad<Ac> four = *reinterpret_cast<const Quad<Ac>*>(&sh.slice.v[xi][c][n + 4 * q]);
        FASTDL_UNROLL
        for (int j = 0; j < 4; ++j) v[4 * q + j] = four.v[j];
      }
      FASTDL_UNROLL
      for (int i = 0; i < S::KR; ++i) {
        FASTDL_UNROLL
        for (int j = 0; j < S::TR; ++j) acc[i][j] += a[i] * v[j];
      }
    }
  }

  // Round r: rows r * kRoundRows + q of every thread's sums, as Ms rows q * kOutGroups + out_group.
  FASTDL_HOST_DEVICE void exchange(int r, typename W::Shared& sh) const {
    FASTDL_UNROLL
    for (int q = 0; q < S::kRoundRows; ++q) {
      FASTDL_UNROLL
      for (int j = 0; j < S::TR; ++j) {
        sh.m[position()][q * S::kOutGroups + out_group()][tile_group() * S::TR + j] = acc[r * S::kRoundRows + q][j];
      }
    }
  }

  FASTDL_HOST_DEVICE void output(const W& w, const FusedBlock<I>& b, int r, const typename W::Shared& sh) const {
    if (t >= S::kRoundOuts * S::TB) return;
    I row, tt;
    split_item<W::L>(I(t), I(S::kRoundOuts), I(S::TB), row, tt);
    const int q = int(row) / S::kOutGroups, group = int(row) % S::kOutGroups;
    const I k = b.k0 + group * S::KR + r * S::kRoundRows + q, tile = b.t0 + tt;
    if (k >= w.g.outs || tile >= w.tiles) return;
    Ac sums[A][A], out[M][M];
    FASTDL_UNROLL
    for (int xi = 0; xi < A * A; ++xi) sums[xi / A][xi % A] = sh.m[xi][row][tt];
    winograd_output_transform<M, Ac>(sums, out);
    store_block<typename W::T, I, W::L, M>(w.y, w.g, tile_origin<M>(w.g, tile), k, out,
                                          w.bias != nullptr ? read(w.bias, k) : Ac(0));
  }
};

template <typename W>
__global__ void __launch_bounds__(W::S::kThreads) fused_kernel(const W w) {
  using I = typename W::I;
  __shared__ typename W::Shared sh;
  FusedThread<W> thread;
  thread.t = int(threadIdx.x);
  for (int64_t index = blockIdx.x; index < w.blocks; index += gridDim.x) {
    const FusedBlock<I> b = w.block(index);
    thread.begin();
    for (I c0 = 0; c0 < w.g.channels; c0 += W::S::CB) {
      thread.stage(w, b, c0, sh);
      __syncthreads();
      thread.multiply(sh);
      __syncthreads();
    }
    for (int r = 0; r < W::S::kRounds; ++r) {
      thread.exchange(r, sh);
      __syncthreads();
      thread.output(w, b, r, sh);
      __syncthreads();
    }
  }
}

template <typename W>
void launch_fused(const W& w, cudaStream_t stream) {
  static_assert(sizeof(typename W::Shared) <= 48 * 1024, "static shared memory");
  const int64_t cap = int64_t(sm_count()) * 8;
  fused_kernel<W><<<unsigned(min_of(w.blocks, cap)), W::S::kThreads, 0, stream>>>(w);
}

// The kernel on host memory: blocks one after another, each block's threads one after another through
// each phase between two barriers.
template <typename W>
void emulate_fused(const W& w) {
  using I = typename W::I;
  const auto sh = std::make_unique<typename W::Shared>();
  std::vector<FusedThread<W>> threads(W::S::kThreads);
  for (int t = 0; t < W::S::kThreads; ++t) threads[t].t = t;
  for (int64_t index = 0; index < w.blocks; ++index) {
    const FusedBlock<I> b = w.block(index);
    for (auto& thread : threads) thread.begin();
    for (I c0 = 0; c0 < w.g.channels; c0 += W::S::CB) {
      for (auto& thread : threads) thread.stage(w, b, c0, *sh);
      for (auto& thread : threads) thread.multiply(*sh);
    }
    for (int r = 0; r < W::S::kRounds; ++r) {
      for (auto& thread : threads) thread.exchange(r, *sh);
      for (auto& thread : threads) thread.output(w, b, r, *sh);
    }
  }
}

int64_t u_elements(const WinogradArgs& a) {
  const int64_t alpha = a.tile + 2;
  return alpha * alpha * a.sizes.channels * a.sizes.outs;
}

template <bool kEmulated>
cudaError_t run(const WinogradArgs& a, cudaStream_t stream) {
  const WinogradSizes& s = a.sizes;
  if (s.batch * s.outs * s.out_h * s.out_w == 0) return cudaSuccess;
  if (a.tile != 2 && a.tile != 4) return cudaErrorInvalidValue;
  const bool narrow = fits_narrow(s, a.tile, u_elements(a), a.execution);
  return dispatch<kEmulated>(a, narrow, [&](auto t, auto i, auto l, auto m) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    constexpr Layout L = decltype(l)::value;
    constexpr int M = decltype(m)::value;
    using W = FusedWork<T, I, L, M>;
    auto* u = static_cast<Acc<T>*>(a.workspace);
    const Geometry<I> g = geometry<I>(s, M);
    const FilterTransform<T, I, M> filters{static_cast<const T*>(a.weight), u, g.outs, g.channels, a.transposed,
                                           true};
    const int64_t tiles = tile_count(s, M), out_blocks = (s.outs + W::S::KB - 1) / W::S::KB;
    const W work{static_cast<const T*>(a.x), u, static_cast<const T*>(a.bias), static_cast<T*>(a.y), g, I(tiles),
                 out_blocks, (tiles + W::S::TB - 1) / W::S::TB * out_blocks};
    if constexpr (kEmulated) {
      emulate_elementwise(filters);
      emulate_fused(work);
      return cudaSuccess;
    } else {
      launch_elementwise(filters, stream);
      launch_fused(work, stream);
      return cudaGetLastError();
    }
  });
}

}  // namespace

std::size_t winograd_fused_workspace_bytes(const WinogradArgs& args) {
  const std::size_t acc = args.dtype == DType::f64 ? 8 : 4;
  return std::size_t(u_elements(args)) * acc;
}

cudaError_t winograd_fused_conv(const WinogradArgs& args, cudaStream_t stream) {
  return args.execution == Execution::device ? run<false>(args, stream) : run<true>(args, stream);
}

}  // namespace fastdl::cuda
