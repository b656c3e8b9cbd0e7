// CUDA kernels of Winograd convolution F(m x m, 3x3), m = 2 or 4, non-fused ("staged"): four kernels
// per call, through float (double for float64) workspaces. A forward call with `fused` set goes to
// winograd_fused.cu instead (steps 2-4 in one kernel). The transforms and their algebra are in
// common/winograd.h; with alpha = m + 2 and xi one of the alpha^2 positions of a transformed tile:
//
//   1. filter transform   U[xi][k][c]  = (G g[k][c] G^T)[xi]             once per call, in double
//   2. input transform    V[xi][c][t]  = (B^T d[c][t] B)[xi]             d: the alpha x alpha patch of tile t
//   3. batched GEMM       M[xi][k][t]  = sum_c U[xi][k][c] V[xi][c][t]   alpha^2 products (K x C) (C x tiles)
//   4. output transform   y[k][tile t] = A^T M[.][k][t] A + bias[k]      the pixels inside the image
//
// The weight gradient (winograd_weight_grad) runs the adjoint of the same pipeline, reducing over tiles
// instead of channels:
//
//   2. input transform    V[xi][c][t]  as above
//   3'. grad_output       W[xi][k][t]  = (A dy[k][t] A^T)[xi]             dy: the m x m block of tile t
//   4'. batched GEMM      P[s][xi][k][c] (+)= sum_{t in split s} W[xi][k][t] V[xi][c][t]
//   5'. filter gradient   dw[k][c]     = G^T (sum_s P[s][.][k][c]) G      once per call, in double
//
// The products' depth is the tiles of a chunk, split into `splits` ranges (split-K) so that layers with
// few channels still fill the device; each split owns a slot of partial sums P[s], written by the
// first chunk and added to by the next ones, and summed in a fixed order by step 5': deterministic,
// no atomics.
//
// Tiles are numbered as in winograd_tiles.cuh, and steps 2-4 run per chunk of consecutive tiles so
// that V and M stay within a fixed budget whatever the batch. Steps 1, 2 and 4 are one thread per item (grid-stride loops over a
// capped grid); their item order follows the layout, so that consecutive threads touch consecutive
// addresses of the activation tensor (tiles for N,C,H,W, channels for N,H,W,C).
//
// The GEMM kernel: 256 threads compute a 64 (output channels) x 128 (tiles, or channels for the weight
// gradient) block of one product, each a 4 x 8 register tile (columns in two runs of 4, 64 apart, so that shared-memory reads are
// 16-byte vectors). Slices of BK = 8 channels of U and V are staged in shared memory, double-buffered:
// the next slice's global loads are in flight in registers while the current one is multiplied.
// Rows, columns and channels past the end are loaded as zeros and not written.
//
// The per-item work and the GEMM thread's phases are __host__ __device__, so that the host emulation
// runs the same code on the CPU (float and double; the GEMM's threads one after another between the
// kernel's barriers). Index arithmetic is int32 when every index fits, else int64.

#include "cuda/winograd_kernels.h"

#include <memory>
#include <vector>

#include "cuda/winograd_fused.h"
#include "cuda/winograd_tiles.cuh"

namespace fastdl::cuda {
namespace {

using namespace winograd_detail;

// V and M of one chunk of tiles: large enough to fill an H100 many times over (a VGG layer of 256
// channels at F(4x4,3x3) gets ~3600 tiles per chunk); small enough for any device memory.
constexpr int64_t kChunkBytes = int64_t{256} << 20;
// The emulation's chunks hold a few tiles, so that the tests cross chunk boundaries; the weight
// gradient's a few more, so that they are split (weight_grad_splits).
constexpr int64_t kEmulatedChunkBytes = int64_t{16} << 10;
constexpr int64_t kEmulatedWeightGradChunkBytes = int64_t{64} << 10;

// Item e = (c, tile t of the chunk).
template <typename T, typename I, Layout L, int M>
struct InputTransform {
  using Index = I;
  const T* x;
  Acc<T>* v;  // [alpha^2][channels][count]
  Geometry<I> g;
  I first, count;  // the chunk: tiles [first, first + count)

  FASTDL_HOST_DEVICE I items() const { return g.channels * count; }
  FASTDL_HOST_DEVICE void operator()(I e) const {
    constexpr int A = M + 2;
    using Ac = Acc<T>;
    I c, t;
    split_item<L>(e, g.channels, count, c, t);
    Ac d[A][A], out[A][A];
    load_patch<T, I, L, M>(x, g, tile_origin<M>(g, first + t), c, d);
    winograd_input_transform<M, Ac>(d, out);
    FASTDL_UNROLL
    for (int xi = 0; xi < A * A; ++xi) v[(I(xi) * g.channels + c) * count + t] = out[xi / A][xi % A];
  }
};

// Item e = (k, tile t of the chunk).
template <typename T, typename I, Layout L, int M>
struct OutputTransform {
  using Index = I;
  const Acc<T>* m;  // [alpha^2][outs][count]
  const T* bias;    // outs values, or null
  T* y;
  Geometry<I> g;
  I first, count;

  FASTDL_HOST_DEVICE I items() const { return g.outs * count; }
  FASTDL_HOST_DEVICE void operator()(I e) const {
    constexpr int A = M + 2;
    using Ac = Acc<T>;
    I k, t;
    split_item<L>(e, g.outs, count, k, t);
    Ac sums[A][A], out[M][M];
    FASTDL_UNROLL
    for (int xi = 0; xi < A * A; ++xi) sums[xi / A][xi % A] = m[(I(xi) * g.outs + k) * count + t];
    winograd_output_transform<M, Ac>(sums, out);
    store_block<T, I, L, M>(y, g, tile_origin<M>(g, first + t), k, out, bias != nullptr ? read(bias, k) : Ac(0));
  }
};

// Item e = (k, tile t of the chunk): the tile's m x m block of grad_output (zero where the tile
// overhangs the image: those outputs were never written) to W[xi][k][t].
template <typename T, typename I, Layout L, int M>
struct GradOutputTransform {
  using Index = I;
  const T* dy;
  Acc<T>* w;  // [alpha^2][outs][count]
  Geometry<I> g;
  I first, count;

  FASTDL_HOST_DEVICE I items() const { return g.outs * count; }
  FASTDL_HOST_DEVICE void operator()(I e) const {
    constexpr int A = M + 2;
    using Ac = Acc<T>;
    I k, t;
    split_item<L>(e, g.outs, count, k, t);
    Ac block[M][M], out[A][A];
    load_block<T, I, L, M>(dy, g, tile_origin<M>(g, first + t), k, block);
    winograd_grad_output_transform<M, Ac>(block, out);
    FASTDL_UNROLL
    for (int xi = 0; xi < A * A; ++xi) w[(I(xi) * g.outs + k) * count + t] = out[xi / A][xi % A];
  }
};

// Item e = (k, c), c fastest: the splits' partial sums of dU[.][k][c] added in order, then
// dw[k][c] = G^T dU G in double (the adjoint of FilterTransform), stored as (outs, channels, 3, 3).
template <typename T, typename I, int M>
struct FilterGradTransform {
  using Index = I;
  const Acc<T>* partials;  // [splits][alpha^2][outs][channels]
  T* dw;
  I outs, channels, splits;

  FASTDL_HOST_DEVICE I items() const { return outs * channels; }
  FASTDL_HOST_DEVICE void operator()(I e) const {
    constexpr int A = M + 2;
    const I plane = outs * channels;
    double du[A][A], g[3][3];
    FASTDL_UNROLL
    for (int xi = 0; xi < A * A; ++xi) {
      Acc<T> sum = partials[I(xi) * plane + e];
      for (I s = 1; s < splits; ++s) sum += partials[(s * (A * A) + xi) * plane + e];
      du[xi / A][xi % A] = double(sum);
    }
    winograd_filter_grad_transform<M, double>(du, g);
    FASTDL_UNROLL
    for (int r = 0; r < 9; ++r) write(dw, e * 9 + r, Acc<T>(g[r / 3][r % 3]));
  }
};

// ---- the batched GEMM -----------------------------------------------------------------------------

// c[s][z] (+)= a[z] b[z] over the depth range of split s, for z < batches and s < splits: a[z] rows x
// depth, c[s][z] rows x cols, row-major; b[z] depth x cols, or cols x depth (kTransposedB), row-major.
// Split s covers depth [s * split_depth, (s + 1) * split_depth); with one split, c[0] = a b. accumulate:
// c += instead of c =.
template <typename A_, typename I_, bool kTransposedB_ = false>
struct BatchedGemm {
  using A = A_;
  using I = I_;
  static constexpr bool kTransposedB = kTransposedB_;
  const A* a;
  const A* b;
  A* c;
  I rows, cols, depth, batches;
  I splits = 1, split_depth = depth;  // split_depth: a multiple of BK, or depth itself
  bool accumulate = false;
};

template <typename A>
struct GemmConfig {
  static constexpr int BM = 64, BN = 128, BK = 8;  // block tile of c; channels per staged slice
  static constexpr int TM = 4, TN = 8;             // per thread: rows tm*4 + i, columns tn*4 + j and BN/2 + the same
  static constexpr int kColThreads = BN / TN;
  static constexpr int kLoadsA = BM * BK / kThreads, kLoadsB = BN * BK / kThreads;
  static constexpr int kPad = 16 / int(sizeof(A));  // rows stay 16-byte aligned; staging stores spread over banks
  static_assert(kColThreads * (BM / TM) == kThreads, "one thread per TM x TN tile");
  static_assert(kThreads % BK == 0 && kThreads % BN == 0, "whole rows of loads");
};

template <typename A>
struct StagedSlices {  // two buffers of one slice of a (k x m) and b (k x n)
  using Cfg = GemmConfig<A>;
  alignas(16) A a[2][Cfg::BK][Cfg::BM + Cfg::kPad];
  alignas(16) A b[2][Cfg::BK][Cfg::BN + Cfg::kPad];
};

template <typename I>
struct GemmTile {
  I m0, n0, z;
  I k_begin, k_end;  // the split's depth range
  I c_at;            // offset of c[s][z]
};

// Tiles are numbered with m fastest (neighbouring blocks share their larger b tile), then n, then the
// batch, then the split.
template <typename P>
FASTDL_HOST_DEVICE GemmTile<typename P::I> gemm_tile(const P& p, int64_t index, int64_t m_tiles, int64_t n_tiles) {
  using I = typename P::I;
  using Cfg = GemmConfig<typename P::A>;
  const int64_t zs = index / (m_tiles * n_tiles), mn = index - zs * m_tiles * n_tiles, nt = mn / m_tiles;
  const I split = I(zs / p.batches), z = I(zs - int64_t(split) * p.batches);
  const I k_begin = split * p.split_depth;
  const I k_end = k_begin < p.depth ? min_of<I>(p.depth, k_begin + p.split_depth) : k_begin;
  const I c_at = (split * p.batches + z) * p.rows * p.cols;
  return {I((mn - nt * m_tiles) * Cfg::BM), I(nt * Cfg::BN), z, k_begin, k_end, c_at};
}

// One thread's state and the phases of its work on a tile; the kernel puts barriers between them.
// Loads: a along its contiguous k (thread t: k = t % BK), b along its contiguous n (n = t % BN).
template <typename P>
struct GemmThread {
  using A = typename P::A;
  using I = typename P::I;
  using Cfg = GemmConfig<A>;

  int t;
  A a_next[Cfg::kLoadsA], b_next[Cfg::kLoadsB];  // the next slice, on its way from global memory
  A acc[Cfg::TM][Cfg::TN];

  // Consecutive threads along columns: a warp's stores of one result cover 2 rows, not 16.
  FASTDL_HOST_DEVICE int tm() const { return t / Cfg::kColThreads; }
  FASTDL_HOST_DEVICE int tn() const { return t % Cfg::kColThreads; }
  FASTDL_HOST_DEVICE int col(int j) const { return (j / 4) * (Cfg::BN / 2) + tn() * 4 + j % 4; }
  FASTDL_HOST_DEVICE int a_row(int j) const { return t / Cfg::BK + j * (kThreads / Cfg::BK); }
  FASTDL_HOST_DEVICE int b_row(int j) const { return t / Cfg::BN + j * (kThreads / Cfg::BN); }

  FASTDL_HOST_DEVICE void begin() {
    FASTDL_UNROLL
    for (int i = 0; i < Cfg::TM; ++i) {
      FASTDL_UNROLL
      for (int j = 0; j < Cfg::TN; ++j) acc[i][j] = A(0);
    }
  }

  // A transposed b is loaded like a: along its contiguous k, columns n = t / BK + j * (kThreads / BK).
  FASTDL_HOST_DEVICE int b_col(int j) const { return t / Cfg::BK + j * (kThreads / Cfg::BK); }

  FASTDL_HOST_DEVICE void fetch(const P& p, const GemmTile<I>& tile, I k0) {
    const I ka = k0 + t % Cfg::BK;
    FASTDL_UNROLL
    for (int j = 0; j < Cfg::kLoadsA; ++j) {
      const I m = tile.m0 + a_row(j);
      a_next[j] = m < p.rows && ka < tile.k_end ? p.a[(tile.z * p.rows + m) * p.depth + ka] : A(0);
    }
    if constexpr (P::kTransposedB) {
      FASTDL_UNROLL
      for (int j = 0; j < Cfg::kLoadsB; ++j) {
        const I n = tile.n0 + b_col(j);
        b_next[j] = n < p.cols && ka < tile.k_end ? p.b[(tile.z * p.cols + n) * p.depth + ka] : A(0);
      }
    } else {
      const I n = tile.n0 + t % Cfg::BN;
      FASTDL_UNROLL
      for (int j = 0; j < Cfg::kLoadsB; ++j) {
        const I k = k0 + b_row(j);
        b_next[j] = n < p.cols && k < tile.k_end ? p.b[(tile.z * p.depth + k) * p.cols + n] : A(0);
      }
    }
  }

  FASTDL_HOST_DEVICE void stage(StagedSlices<A>& s, int buf) const {
    FASTDL_UNROLL
    for (int j = 0; j < Cfg::kLoadsA; ++j) s.a[buf][t % Cfg::BK][a_row(j)] = a_next[j];
    FASTDL_UNROLL
    for (int j = 0; j < Cfg::kLoadsB; ++j) {
      if constexpr (P::kTransposedB) {
        s.b[buf][t % Cfg::BK][b_col(j)] = b_next[j];
      } else {
        s.b[buf][b_row(j)][t % Cfg::BN] = b_next[j];
      }
    }
  }

  FASTDL_HOST_DEVICE void multiply(const StagedSlices<A>& s, int buf) {
    FASTDL_UNROLL
    for (int k = 0; k < Cfg::BK; ++k) {
      const Quad<A> a = *reinterpret_cast<const Quad<A>*>(&s.a[buf][k][tm() * 4]);
      const Quad<A> lo = *reinterpret_cast<const Quad<A>*>(&s.b[buf][k][tn() * 4]);
      const Quad<A> hi = *reinterpret_cast<const Quad<A>*>(&s.b[buf][k][Cfg::BN / 2 + tn() * 4]);
      FASTDL_UNROLL
      for (int i = 0; i < 4; ++i) {
        FASTDL_UNROLL
        for (int j = 0; j < 4; ++j) {
          acc[i][j] += a.v[i] * lo.v[j];
          acc[i][4 + j] += a.v[i] * hi.v[j];
        }
      }
    }
  }

  FASTDL_HOST_DEVICE void finish(const P& p, const GemmTile<I>& tile) const {
    FASTDL_UNROLL
    for (int i = 0; i < Cfg::TM; ++i) {
      const I m = tile.m0 + tm() * 4 + i;
      if (m >= p.rows) continue;
      FASTDL_UNROLL
      for (int j = 0; j < Cfg::TN; ++j) {
        const I n = tile.n0 + col(j);
        if (n >= p.cols) continue;
        A& out = p.c[tile.c_at + m * p.cols + n];
        out = p.accumulate ? out + acc[i][j] : acc[i][j];
      }
    }
  }
};

// The grid is capped; blocks loop over tiles.
template <typename P>
__global__ void __launch_bounds__(kThreads) batched_gemm_kernel(const P p, int64_t m_tiles, int64_t n_tiles,
                                                                int64_t tiles) {
  using Cfg = GemmConfig<typename P::A>;
  using I = typename P::I;
  __shared__ StagedSlices<typename P::A> staged;
  GemmThread<P> thread;
  thread.t = int(threadIdx.x);
  for (int64_t index = blockIdx.x; index < tiles; index += gridDim.x) {
    const GemmTile<I> tile = gemm_tile(p, index, m_tiles, n_tiles);
    thread.begin();
    multiply_slices<Cfg::BK>(p, tile, tile.k_begin, tile.k_end, staged, [&](auto&& phase) {
      phase(thread);
      __syncthreads();
    });
    thread.finish(p, tile);
  }
}

template <typename P>
int64_t gemm_tiles(const P& p, int64_t& m_tiles, int64_t& n_tiles) {
  using Cfg = GemmConfig<typename P::A>;
  m_tiles = (int64_t(p.rows) + Cfg::BM - 1) / Cfg::BM;
  n_tiles = (int64_t(p.cols) + Cfg::BN - 1) / Cfg::BN;
  return m_tiles * n_tiles * int64_t(p.batches) * int64_t(p.splits);
}

// ---- planning ---------------------------------------------------------------------------------------

// Byte offsets into the workspace: U (the weight gradient: its splits' partial sums P), then one
// chunk's V and M (W), all in the arithmetic type.
struct Plan {
  int64_t tiles, chunk;
  int64_t splits;  // the weight gradient's split-K; 1 for the forward
  std::size_t v_at, m_at, bytes;
  bool narrow;  // int32 indices
};

// The weight gradient's products are alpha^2 x ceil(K / BM) x ceil(C / BN) blocks deep in tiles; split
// their depth until the device has about kTargetBlocks blocks (eight 256-thread blocks per SM of an
// H100), but no split shallower than kMinSplitDepth tiles. The emulation splits a few tiles deep (and
// its last splits may be empty), so that tests cross split boundaries.
int64_t weight_grad_splits(int64_t alpha2, const WinogradSizes& s, int64_t chunk, Execution e) {
  using Cfg = GemmConfig<float>;
  const bool host = e == Execution::host;
  const int64_t target = host ? 64 : 1024, min_depth = host ? Cfg::BK : 256, most = host ? 4 : 32;
  const int64_t blocks = alpha2 * ((s.outs + Cfg::BM - 1) / Cfg::BM) * ((s.channels + Cfg::BN - 1) / Cfg::BN);
  const int64_t wanted = (target + blocks - 1) / blocks, deepest = (chunk + min_depth - 1) / min_depth;
  return max_of<int64_t>(1, min_of(wanted, min_of(most, deepest)));
}

// A chunk's split depth: whole slices of BK tiles.
int64_t split_depth(int64_t count, int64_t splits) {
  constexpr int64_t kSlice = GemmConfig<float>::BK;
  return ((count + splits - 1) / splits + kSlice - 1) / kSlice * kSlice;
}

Plan plan(DType dtype, int tile, const WinogradSizes& s, Execution execution, bool weight_grad) {
  const int64_t m = tile, alpha2 = (m + 2) * (m + 2), acc = dtype == DType::f64 ? 8 : 4;
  const auto aligned = [](int64_t bytes) { return std::size_t((bytes + 255) / 256 * 256); };
  Plan p;
  p.tiles = tile_count(s, tile);
  const int64_t per_tile = alpha2 * (s.channels + s.outs) * acc;
  if (execution == Execution::host) {
    const int64_t budget = weight_grad ? kEmulatedWeightGradChunkBytes : kEmulatedChunkBytes;
    p.chunk = max_of<int64_t>(1, budget / max_of<int64_t>(per_tile, 1));
  } else {
    // Whole column tiles of the GEMM, at least one.
    constexpr int64_t kColumns = GemmConfig<float>::BN;
    p.chunk = max_of<int64_t>(1, kChunkBytes / max_of<int64_t>(per_tile, 1) / kColumns) * kColumns;
  }
  p.chunk = max_of<int64_t>(1, min_of(p.chunk, p.tiles));
  p.splits = weight_grad ? weight_grad_splits(alpha2, s, p.chunk, execution) : 1;
  const int64_t u = p.splits * alpha2 * s.outs * s.channels, v = alpha2 * s.channels * p.chunk,
                mm = alpha2 * s.outs * p.chunk;
  p.v_at = aligned(u * acc);
  p.m_at = p.v_at + aligned(v * acc);
  p.bytes = p.m_at + aligned(mm * acc);
  p.narrow = fits_narrow(s, tile, max_of(max_of(u, v), mm), execution);
  return p;
}

// ---- running a call: launched on a stream, or emulated on the host -------------------------------

struct Launcher {
  cudaStream_t stream;

  template <typename Work>
  void elementwise(const Work& work) const {
    launch_elementwise(work, stream);
  }
  template <typename P>
  void gemm(const P& p) const {
    int64_t m_tiles, n_tiles;
    const int64_t tiles = gemm_tiles(p, m_tiles, n_tiles);
    if (tiles == 0) return;
    const int64_t cap = int64_t(sm_count()) * 32;
    batched_gemm_kernel<P><<<unsigned(min_of(tiles, cap)), kThreads, 0, stream>>>(p, m_tiles, n_tiles, tiles);
  }
  cudaError_t status() const { return cudaGetLastError(); }
};

// The same work on host memory: items in order, and the GEMM's tiles one after another, each tile's
// threads one after another through each phase between two barriers (races are not detected; every
// index, bound and buffer swap is exercised). float and double only.
struct Emulator {
  template <typename Work>
  void elementwise(const Work& work) const {
    emulate_elementwise(work);
  }
  template <typename P>
  void gemm(const P& p) const {
    using Cfg = GemmConfig<typename P::A>;
    using I = typename P::I;
    int64_t m_tiles, n_tiles;
    const int64_t tiles = gemm_tiles(p, m_tiles, n_tiles);
    const auto staged = std::make_unique<StagedSlices<typename P::A>>();
    std::vector<GemmThread<P>> threads(kThreads);
    for (int t = 0; t < kThreads; ++t) threads[t].t = t;
    for (int64_t index = 0; index < tiles; ++index) {
      const GemmTile<I> tile = gemm_tile(p, index, m_tiles, n_tiles);
      for (auto& thread : threads) thread.begin();
      multiply_slices<Cfg::BK>(p, tile, tile.k_begin, tile.k_end, *staged, [&](auto&& phase) {
        for (auto& thread : threads) phase(thread);
      });
      for (auto& thread : threads) thread.finish(p, tile);
    }
  }
  cudaError_t status() const { return cudaSuccess; }
};

// The workspace's three regions (Plan): U (the weight gradient: the partial sums P), V, M (W).
template <typename Ac>
struct Buffers {
  Ac *u, *v, *m;
};

template <typename Ac>
Buffers<Ac> buffers(void* workspace, const Plan& pl) {
  char* ws = static_cast<char*>(workspace);
  return {reinterpret_cast<Ac*>(ws), reinterpret_cast<Ac*>(ws + pl.v_at), reinterpret_cast<Ac*>(ws + pl.m_at)};
}

template <typename Exec>
cudaError_t run(const WinogradArgs& a, const Exec& exec) {
  const WinogradSizes& s = a.sizes;
  if (s.batch * s.outs * s.out_h * s.out_w == 0) return cudaSuccess;
  if (a.tile != 2 && a.tile != 4) return cudaErrorInvalidValue;
  const Plan pl = plan(a.dtype, a.tile, s, a.execution, false);
  return dispatch<std::is_same_v<Exec, Emulator>>(a, pl.narrow, [&](auto t, auto i, auto l, auto m) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    using Ac = Acc<T>;
    constexpr Layout L = decltype(l)::value;
    constexpr int M = decltype(m)::value;
    constexpr I kAlpha2 = (M + 2) * (M + 2);
    const auto [u, v, sums] = buffers<Ac>(a.workspace, pl);
    const Geometry<I> g = geometry<I>(s, a.tile);
    exec.elementwise(FilterTransform<T, I, M>{static_cast<const T*>(a.weight), u, g.outs, g.channels, a.transposed});
    for (int64_t first = 0; first < pl.tiles; first += pl.chunk) {
      const I count = I(min_of(pl.chunk, pl.tiles - first));
      exec.elementwise(InputTransform<T, I, L, M>{static_cast<const T*>(a.x), v, g, I(first), count});
      exec.gemm(BatchedGemm<Ac, I>{u, v, sums, g.outs, count, g.channels, kAlpha2});
      exec.elementwise(OutputTransform<T, I, L, M>{sums, static_cast<const T*>(a.bias), static_cast<T*>(a.y), g,
                                                   I(first), count});
    }
    return exec.status();
  });
}

template <typename Exec>
cudaError_t run_weight_grad(const WinogradWeightGradArgs& a, const Exec& exec) {
  const WinogradSizes& s = a.sizes;
  if (s.outs * s.channels == 0) return cudaSuccess;
  if (s.batch * s.out_h * s.out_w == 0 || (a.tile != 2 && a.tile != 4)) return cudaErrorInvalidValue;
  const Plan pl = plan(a.dtype, a.tile, s, a.execution, true);
  return dispatch<std::is_same_v<Exec, Emulator>>(a, pl.narrow, [&](auto t, auto i, auto l, auto m) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    using Ac = Acc<T>;
    constexpr Layout L = decltype(l)::value;
    constexpr int M = decltype(m)::value;
    constexpr I kAlpha2 = (M + 2) * (M + 2);
    const auto [partials, v, w] = buffers<Ac>(a.workspace, pl);
    const Geometry<I> g = geometry<I>(s, a.tile);
    for (int64_t first = 0; first < pl.tiles; first += pl.chunk) {
      const I count = I(min_of(pl.chunk, pl.tiles - first));
      exec.elementwise(InputTransform<T, I, L, M>{static_cast<const T*>(a.x), v, g, I(first), count});
      exec.elementwise(GradOutputTransform<T, I, L, M>{static_cast<const T*>(a.dy), w, g, I(first), count});
      // P[s][xi] (+)= W[xi] V[xi]^T: rows K, columns C, depth the chunk's tiles.
      exec.gemm(BatchedGemm<Ac, I, true>{w, v, partials, g.outs, g.channels, count, kAlpha2, I(pl.splits),
                                         I(split_depth(count, pl.splits)), first > 0});
    }
    exec.elementwise(FilterGradTransform<T, I, M>{partials, static_cast<T*>(a.dw), g.outs, g.channels, I(pl.splits)});
    return exec.status();
  });
}

}  // namespace

std::size_t winograd_workspace_bytes(const WinogradArgs& args) {
  if (args.fused) return winograd_fused_workspace_bytes(args);
  return plan(args.dtype, args.tile, args.sizes, args.execution, false).bytes;
}

cudaError_t winograd_conv(const WinogradArgs& args, cudaStream_t stream) {
  if (args.fused) return winograd_fused_conv(args, stream);
  return args.execution == Execution::device ? run(args, Launcher{stream}) : run(args, Emulator{});
}

std::size_t winograd_workspace_bytes(const WinogradWeightGradArgs& args) {
  return plan(args.dtype, args.tile, args.sizes, args.execution, true).bytes;
}

cudaError_t winograd_weight_grad(const WinogradWeightGradArgs& args, cudaStream_t stream) {
  return args.execution == Execution::device ? run_weight_grad(args, Launcher{stream})
                                             : run_weight_grad(args, Emulator{});
}

}  // namespace fastdl::cuda
