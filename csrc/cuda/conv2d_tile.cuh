#pragma once
// The CUDA convolution's tile kernel (conv2d_kernels_impl.cuh): FFMA for float and double, tensor
// cores (mma) for float16 and bfloat16, over the GEMMs of conv2d_gemms.cuh.
//
// The tile kernel: 256 threads compute a 128 x 64 tile of C, each an 8 x 4 register tile (rows in
// two runs of 4, 64 apart, so that shared-memory reads are conflict-free 16-byte vectors). Slices of
// BK = 16 reduction steps (8 for double or int64 indices) of A and B are staged in shared memory as
// float (double), double-buffered: the next slice's global loads are in flight in registers while
// the current one is multiplied, then stored to the other buffer, one barrier per slice. Each operand
// is loaded with consecutive threads along whichever of its two indices is contiguous in memory
// (kAAlongK, kBAlongK), out-of-image and out-of-range elements as zeros. Pixels and taps are decoded
// with multiply-shift division by precomputed divisors; index arithmetic is int32 when every index
// fits.
//
// The operand loaders and the thread's phases are __host__ __device__ so that the tile logic can be
// emulated on the host (float and double).

#include <type_traits>

#include "cuda/conv2d_gemms.cuh"
#include "cuda/device_utils.cuh"

namespace fastdl::cuda {
namespace {

template <typename A, typename I>
struct TileConfig {
  static constexpr int BM = 128, BN = 64;  // tile of C
  // Reduction steps per staged slice: 8 where 16 would spill registers (double, int64 indices).
  static constexpr int BK = sizeof(A) == 4 && sizeof(I) == 4 ? 16 : 8;
  static constexpr int TM = 8, TN = 4;  // per thread: rows tm*4 + {0..3} and BM/2 + the same
  static constexpr int kRowThreads = BM / TM;
  static constexpr int kPad = 16 / int(sizeof(A));  // rows stay 16-byte aligned; staging stores spread over banks
  static constexpr int kMinBlocks = sizeof(A) == 4 ? 2 : 1;
  static_assert(kRowThreads * (BN / TN) == kThreads, "one thread per TM x TN tile");
};

template <typename Cfg, typename A>
struct Staged {  // two buffers of one slice of A (k x m) and B (k x n)
  alignas(16) A a[2][Cfg::BK][Cfg::BM + Cfg::kPad];
  alignas(16) A b[2][Cfg::BK][Cfg::BN + Cfg::kPad];
};

template <typename A>
struct alignas(16) Quad {
  A v[4];
};

template <typename I>
struct Tile {
  I m0, n0, z;
  IndexRange<I> depth;
};

template <typename Cfg, typename P>
FASTDL_HOST_DEVICE Tile<typename P::I> tile_at(const P& p, int64_t index, int64_t m_tiles, int64_t n_tiles) {
  using I = typename P::I;
  const int64_t z = index / (m_tiles * n_tiles), mn = index - z * m_tiles * n_tiles, nt = mn / m_tiles;
  return {I((mn - nt * m_tiles) * Cfg::BM), I(nt * Cfg::BN), I(z), p.depth(I(z))};
}

// Which element of a D x BK operand slice load j of thread t fetches: consecutive threads along k
// or along d, whichever is contiguous in memory. Along k a thread keeps one k (one decode per slice);
// along d, warps take runs of 32 d and a thread meets only D/32 distinct d and BK/8 distinct k.
struct Slot {
  int d, k;
};

template <int D, int BK, bool kAlongK>
FASTDL_HOST_DEVICE Slot slot(int t, int j) {
  static_assert(D % kWarp == 0 && BK % (kThreads / kWarp) == 0 && kThreads % BK == 0, "whole warps per slice");
  if constexpr (kAlongK) return {t / BK + j * (kThreads / BK), t % BK};
  constexpr int kRuns = D / kWarp;
  return {t % kWarp + kWarp * (j % kRuns), t / kWarp + (kThreads / kWarp) * (j / kRuns)};
}

// One thread's state and the phases of its work on a tile; the kernel puts barriers between them.
template <typename Cfg, typename P>
struct GemmThread {
  using I = typename P::I;
  using A = Acc<typename P::T>;
  using StagedSlices = Staged<Cfg, A>;
  static constexpr int kLoadsA = Cfg::BM * Cfg::BK / kThreads, kLoadsB = Cfg::BN * Cfg::BK / kThreads;

  int t;
  typename P::AFix a_fix[kLoadsA];
  typename P::BFix b_fix[kLoadsB];
  A a_next[kLoadsA], b_next[kLoadsB];  // the next slice, on its way from global memory
  A acc[Cfg::TM][Cfg::TN];

  FASTDL_HOST_DEVICE int tm() const { return t % Cfg::kRowThreads; }
  FASTDL_HOST_DEVICE int tn() const { return t / Cfg::kRowThreads; }
  FASTDL_HOST_DEVICE int row(int i) const { return (i / 4) * (Cfg::BM / 2) + tm() * 4 + i % 4; }

  FASTDL_HOST_DEVICE void begin(const P& p, const Tile<I>& tile) {
#pragma unroll
    for (int j = 0; j < kLoadsA; ++j) {
      const I m = tile.m0 + slot<Cfg::BM, Cfg::BK, P::kAAlongK>(t, j).d;
      a_fix[j] = p.a_fix(m < p.rows() ? m : I(0), tile.z, m < p.rows());
    }
#pragma unroll
    for (int j = 0; j < kLoadsB; ++j) {
      const I n = tile.n0 + slot<Cfg::BN, Cfg::BK, P::kBAlongK>(t, j).d;
      b_fix[j] = p.b_fix(n < p.cols() ? n : I(0), tile.z, n < p.cols());
    }
#pragma unroll
    for (int i = 0; i < Cfg::TM; ++i) {
#pragma unroll
      for (int j = 0; j < Cfg::TN; ++j) acc[i][j] = 0;
    }
  }

  // The keys are computed outside any condition (k past the end decodes as the slice's first k, whose
  // loads are dropped), so that the loads sharing a k share one decode.
  FASTDL_HOST_DEVICE void fetch(const P& p, const Tile<I>& tile, I k0) {
#pragma unroll
    for (int j = 0; j < kLoadsA; ++j) {
      const I k = k0 + slot<Cfg::BM, Cfg::BK, P::kAAlongK>(t, j).k;
      const bool in_depth = k < tile.depth.end;
      const typename P::AKey key = p.a_key(in_depth ? k : k0);
      const I at = in_depth ? p.a_offset(a_fix[j], key) : I(-1);
      a_next[j] = at >= 0 ? read(p.a, at) : A(0);
    }
#pragma unroll
    for (int j = 0; j < kLoadsB; ++j) {
      const I k = k0 + slot<Cfg::BN, Cfg::BK, P::kBAlongK>(t, j).k;
      const bool in_depth = k < tile.depth.end;
      const typename P::BKey key = p.b_key(in_depth ? k : k0);
      const I at = in_depth ? p.b_offset(b_fix[j], key) : I(-1);
      b_next[j] = at >= 0 ? read(p.b, at) : A(0);
    }
  }

  FASTDL_HOST_DEVICE void stage(Staged<Cfg, A>& s, int buf) const {
#pragma unroll
    for (int j = 0; j < kLoadsA; ++j) {
      const Slot e = slot<Cfg::BM, Cfg::BK, P::kAAlongK>(t, j);
      s.a[buf][e.k][e.d] = a_next[j];
    }
#pragma unroll
    for (int j = 0; j < kLoadsB; ++j) {
      const Slot e = slot<Cfg::BN, Cfg::BK, P::kBAlongK>(t, j);
      s.b[buf][e.k][e.d] = b_next[j];
    }
  }

  FASTDL_HOST_DEVICE void multiply(const Staged<Cfg, A>& s, int buf) {
#pragma unroll
    for (int k = 0; k < Cfg::BK; ++k) {
      const Quad<A> lo = *reinterpret_cast<const Quad<A>*>(&s.a[buf][k][tm() * 4]);
      const Quad<A> hi = *reinterpret_cast<const Quad<A>*>(&s.a[buf][k][Cfg::BM / 2 + tm() * 4]);
      const Quad<A> b = *reinterpret_cast<const Quad<A>*>(&s.b[buf][k][tn() * 4]);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          acc[i][j] += lo.v[i] * b.v[j];
          acc[4 + i][j] += hi.v[i] * b.v[j];
        }
      }
    }
  }

  FASTDL_HOST_DEVICE void finish(const P& p, const Tile<I>& tile) const {
    I col_at[Cfg::TN];
    A bias[Cfg::TN];
    bool col_ok[Cfg::TN];
#pragma unroll
    for (int j = 0; j < Cfg::TN; ++j) {
      const I n = tile.n0 + tn() * Cfg::TN + j;
      col_ok[j] = n < p.cols();
      col_at[j] = col_ok[j] ? p.col_offset(n, tile.z) : I(0);
      bias[j] = col_ok[j] ? p.bias_of(n, tile.z) : A(0);
    }
#pragma unroll
    for (int i = 0; i < Cfg::TM; ++i) {
      const I m = tile.m0 + row(i);
      if (m >= p.rows()) continue;
      const I at = p.row_offset(m, tile.z);
#pragma unroll
      for (int j = 0; j < Cfg::TN; ++j) {
        if (col_ok[j]) write(p.out, at + col_at[j], acc[i][j] + bias[j]);
      }
    }
  }
};

// ---- the tensor-core tile (float16 and bfloat16) ---------------------------------------------------
//
// The same block tile, operand loads and slices of BK = 16 as the FFMA tile, with the slices staged as
// 16-bit values, rows along k (A as [m][k], B as [n][k]; rows padded to 24 values, 12 words, so that
// the fragment loads below hit 32 distinct banks), and the products on tensor cores: each warp
// computes a 32 x 32 part of the tile (warps 4 along m x 2 along n) as 2 x 4 mma.sync.m16n8k16 per
// slice, accumulating in float. Operands stay exact (the inputs' own 16-bit values), as in the FFMA
// tile; the sums' order differs.
//
// Fragments, in PTX's layout for m16n8k16 (g = lane / 4, q = lane % 4; pairs of consecutive k in one
// 32-bit register, the lower k in the lower half): A (16 x 16, row) registers 0-3 hold rows g, g + 8,
// g, g + 8 at k = 2q, 2q + 1 (+ 8 for registers 2 and 3); B (16 x 8, col) registers 0-1 hold column g
// at k = 2q, 2q + 1 (+ 8 for register 1); C (16 x 8) values 0-3 are rows g, g, g + 8, g + 8 at columns
// 2q, 2q + 1, 2q, 2q + 1. The host emulation runs the same fragment loads for every lane of the warp
// and multiplies the fragments by that table (mma_emulated), so that the loads are checked on the host.

FASTDL_HOST_DEVICE void store_as(float& dst, float v) { dst = v; }
FASTDL_HOST_DEVICE void store_as(__half& dst, float v) { dst = __float2half_rn(v); }
FASTDL_HOST_DEVICE void store_as(__nv_bfloat16& dst, float v) { dst = __float2bfloat16_rn(v); }
template <typename E>
float as_float(E v) {
  if constexpr (std::is_same_v<E, __half>) {
    return __half2float(v);
  } else if constexpr (std::is_same_v<E, __nv_bfloat16>) {
    return __bfloat162float(v);
  } else {
    return v;
  }
}

template <typename E>
struct Fragments {  // one lane's operands of one k16 step: A's 4 registers and B's 2, as value pairs
  E a[2][4][2];     // [m16 tile][register][lower, upper]
  E b[4][2][2];     // [n8 tile][register][lower, upper]
};

template <typename Cfg, typename E>
struct Staged16 {  // two buffers of one slice of A ([m][k]) and B ([n][k]), 16-bit (float when emulated)
  static constexpr int kRow = Cfg::BK + 8;
  alignas(16) E a[2][Cfg::BM][kRow];
  alignas(16) E b[2][Cfg::BN][kRow];
};

// Lane `lane` of warp (wm, wn)'s fragments of slice `buf`.
template <typename Cfg, typename E>
FASTDL_HOST_DEVICE void load_fragments(const Staged16<Cfg, E>& s, int buf, int wm, int wn, int lane,
                                       Fragments<E>& f) {
  const int g = lane / 4, k = (lane % 4) * 2;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
    const int r = wm * 32 + mt * 16 + g;
#pragma unroll
    for (int reg = 0; reg < 4; ++reg) {
      const E* at = &s.a[buf][r + (reg % 2) * 8][k + (reg / 2) * 8];
      f.a[mt][reg][0] = at[0];
      f.a[mt][reg][1] = at[1];
    }
  }
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    const int n = wn * 32 + nt * 8 + g;
#pragma unroll
    for (int reg = 0; reg < 2; ++reg) {
      const E* at = &s.b[buf][n][k + reg * 8];
      f.b[nt][reg][0] = at[0];
      f.b[nt][reg][1] = at[1];
    }
  }
}

// The warp's mma.sync of m16 tile mt and n8 tile nt on the host: A and B rebuilt from every lane's
// fragments by PTX's table, then lane `lane`'s four results added to d.
template <typename E>
void mma_emulated(const Fragments<E> (&warp)[kWarp], int mt, int nt, int lane, float (&d)[4]) {
  float a[16][16], b[16][8];
  for (int l = 0; l < kWarp; ++l) {
    const int g = l / 4, k = (l % 4) * 2;
    for (int reg = 0; reg < 4; ++reg) {
      for (int half = 0; half < 2; ++half) {
        a[g + (reg % 2) * 8][k + (reg / 2) * 8 + half] = as_float(warp[l].a[mt][reg][half]);
      }
    }
    for (int reg = 0; reg < 2; ++reg) {
      for (int half = 0; half < 2; ++half) b[k + reg * 8 + half][g] = as_float(warp[l].b[nt][reg][half]);
    }
  }
  const int g = lane / 4, c = (lane % 4) * 2;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i / 2) * 8, col = c + i % 2;
    for (int k = 0; k < 16; ++k) d[i] += a[row][k] * b[k][col];
  }
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
template <typename E>
__device__ __forceinline__ uint32_t pair_bits(const E (&pair)[2]) {
  return uint32_t(*reinterpret_cast<const uint16_t*>(&pair[0])) |
         (uint32_t(*reinterpret_cast<const uint16_t*>(&pair[1])) << 16);
}

__device__ __forceinline__ void mma(float (&d)[4], const __half (&a)[4][2], const __half (&b)[2][2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(pair_bits(a[0])), "r"(pair_bits(a[1])), "r"(pair_bits(a[2])), "r"(pair_bits(a[3])),
        "r"(pair_bits(b[0])), "r"(pair_bits(b[1])));
}

__device__ __forceinline__ void mma(float (&d)[4], const __nv_bfloat16 (&a)[4][2], const __nv_bfloat16 (&b)[2][2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(pair_bits(a[0])), "r"(pair_bits(a[1])), "r"(pair_bits(a[2])), "r"(pair_bits(a[3])),
        "r"(pair_bits(b[0])), "r"(pair_bits(b[1])));
}
#endif

// One thread of the tensor-core tile: GemmThread's operand loads, then its own staging, products and
// results. E: the staged type (T on the device; float in the host emulation).
template <typename Cfg, typename P, typename E>
struct MmaThread : GemmThread<Cfg, P> {
  using Base = GemmThread<Cfg, P>;
  using I = typename Base::I;
  using A = typename Base::A;
  using StagedSlices = Staged16<Cfg, E>;
  static_assert(Cfg::BM == 128 && Cfg::BN == 64 && Cfg::BK == 16 && Cfg::TM * Cfg::TN == 32,
                "8 warps of 32 x 32, one k16 step per slice, 2 x 4 m16n8 tiles of 4 values per thread");

  FASTDL_HOST_DEVICE int lane() const { return this->t % kWarp; }
  FASTDL_HOST_DEVICE int wm() const { return (this->t / kWarp) % 4; }
  FASTDL_HOST_DEVICE int wn() const { return (this->t / kWarp) / 4; }

  FASTDL_HOST_DEVICE void stage(StagedSlices& s, int buf) const {
    for (int j = 0; j < Base::kLoadsA; ++j) {
      const Slot e = slot<Cfg::BM, Cfg::BK, P::kAAlongK>(this->t, j);
      store_as(s.a[buf][e.d][e.k], this->a_next[j]);
    }
    for (int j = 0; j < Base::kLoadsB; ++j) {
      const Slot e = slot<Cfg::BN, Cfg::BK, P::kBAlongK>(this->t, j);
      store_as(s.b[buf][e.d][e.k], this->b_next[j]);
    }
  }

  // Accumulator (mt, nt, i) lives in acc[mt * 4 + nt][i].
#if defined(__CUDA_ARCH__)
  __device__ void multiply(const StagedSlices& s, int buf) {
#if __CUDA_ARCH__ >= 800
    if constexpr (std::is_same_v<E, __half> || std::is_same_v<E, __nv_bfloat16>) {
      Fragments<E> f;
      load_fragments(s, buf, wm(), wn(), lane(), f);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) mma(this->acc[mt * 4 + nt], f.a[mt], f.b[nt]);
      }
    }
#else
    __trap();  // launch_gemm takes this tile only where it was compiled for sm_80 or later (runs_mma)
#endif
  }
#else
  // Host emulation: the whole warp's fragments (every lane's loads), multiplied by PTX's table.
  void multiply(const StagedSlices& s, int buf) {
    Fragments<E> warp[kWarp];
    for (int l = 0; l < kWarp; ++l) load_fragments(s, buf, wm(), wn(), l, warp[l]);
    for (int mt = 0; mt < 2; ++mt) {
      for (int nt = 0; nt < 4; ++nt) mma_emulated(warp, mt, nt, lane(), this->acc[mt * 4 + nt]);
    }
  }
#endif

  FASTDL_HOST_DEVICE void finish(const P& p, const Tile<I>& tile) const {
    const int g = lane() / 4, c = (lane() % 4) * 2;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const I n = tile.n0 + wn() * 32 + nt * 8 + c + half;
        if (n >= p.cols()) continue;
        const I col = p.col_offset(n, tile.z);
        const A bias = p.bias_of(n, tile.z);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
          for (int upper = 0; upper < 2; ++upper) {
            const I m = tile.m0 + wm() * 32 + mt * 16 + g + upper * 8;
            if (m >= p.rows()) continue;
            write(p.out, p.row_offset(m, tile.z) + col, this->acc[mt * 4 + nt][upper * 2 + half] + bias);
          }
        }
      }
    }
  }
};

// Which tile a GEMM of element type T runs: tensor cores for float16 and bfloat16 where the slices
// are 16 deep (int32 indices) and the device has them, else the FFMA tile.
template <typename T>
constexpr bool kTensorCoreType = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

// Whether `kernel`, a tensor-core tile, runs its mma.sync m16n8k16 on the current device: the device
// has it (sm_80 and up) and the kernel's code for it was compiled for sm_80 or later (a build for older
// architectures with PTX, compiled just in time on a newer device, holds the tile's __trap instead).
// Looked up once per kernel and device.
template <typename Kernel>
bool runs_mma(Kernel kernel) {
  static signed char known[64] = {};  // 0: not yet looked up, 1: yes, -1: no
  return per_device(known, [kernel](int device) -> signed char {
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaFuncAttributes attr{};
    if (major < 8) return -1;
    if (cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) {
      (void)cudaGetLastError();  // no image for this device: the FFMA tile's launch reports it
      return -1;
    }
    return attr.ptxVersion >= 80 ? 1 : -1;
  }) > 0;
}

// Tiles are numbered with m fastest, so that neighbouring blocks share their B tile; the grid is
// capped and blocks loop over tiles.
template <typename Cfg, typename Thread, typename P>
__global__ void __launch_bounds__(kThreads, Cfg::kMinBlocks)
    implicit_gemm_kernel(const P p, int64_t m_tiles, int64_t n_tiles, int64_t tiles) {
  using I = typename P::I;
  __shared__ typename Thread::StagedSlices staged;
  Thread thread;
  thread.t = int(threadIdx.x);
  for (int64_t index = blockIdx.x; index < tiles; index += gridDim.x) {
    const Tile<I> tile = tile_at<Cfg>(p, index, m_tiles, n_tiles);
    thread.begin(p, tile);
    multiply_slices<Cfg::BK>(p, tile, tile.depth.begin, tile.depth.end, staged, [&](auto&& phase) {
      phase(thread);
      __syncthreads();
    });
    thread.finish(p, tile);
  }
}

template <typename P>
void launch_gemm(const P& p, cudaStream_t stream) {
  using Cfg = TileConfig<Acc<typename P::T>, typename P::I>;
  const int64_t m_tiles = (int64_t(p.rows()) + Cfg::BM - 1) / Cfg::BM;
  const int64_t n_tiles = (int64_t(p.cols()) + Cfg::BN - 1) / Cfg::BN;
  const int64_t tiles = m_tiles * n_tiles * int64_t(p.parts());
  if (tiles == 0) return;
  const int64_t cap = int64_t(sm_count()) * Cfg::kMinBlocks * 16;
  const unsigned blocks = unsigned(min_of(tiles, cap));
  if constexpr (kTensorCoreType<typename P::T> && Cfg::BK == 16) {
    const auto mma_kernel = implicit_gemm_kernel<Cfg, MmaThread<Cfg, P, typename P::T>, P>;
    if (runs_mma(mma_kernel)) {
      mma_kernel<<<blocks, kThreads, 0, stream>>>(p, m_tiles, n_tiles, tiles);
      return;
    }
  }
  implicit_gemm_kernel<Cfg, GemmThread<Cfg, P>><<<blocks, kThreads, 0, stream>>>(p, m_tiles, n_tiles, tiles);
}

}  // namespace
}  // namespace fastdl::cuda
