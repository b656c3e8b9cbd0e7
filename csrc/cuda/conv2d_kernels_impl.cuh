#pragma once
// CUDA kernels of 2-D convolution: the forward, grad_input and grad_weight passes as one
// implicit-GEMM tile kernel, plus small kernels for grad_bias, split sums and weight reordering.
//
// Compiled as three units that build in parallel, each including this file for its element types
// (FASTDL_CONV_UNIT, kInThisUnit): conv2d_kernels.cu (float, and the entry points of conv2d_kernels.h),
// conv2d_kernels_f64.cu (double) and conv2d_kernels_16bit.cu (float16, bfloat16).
//
// Each pass is, per group g, a GEMM C[m][n] = sum_k A[m][k] * B[k][n] whose operands are gathered
// from the tensors while loading (never materialized):
//
//   pass         m (rows)              n (columns)         k (reduction)       A     B     C
//   forward      output pixel n,oh,ow  output channel Kg   c,r,s  (Cg*R*S)     x     w     y
//   grad_input   input pixel n,ih,iw   input channel Cg    k,r,s  (Kg*R*S)     dy    w     dx
//   grad_weight  tap c,r,s (Cg*R*S)    output channel Kg   output pixel        x     dy    partials
//
// grad_input reads dy[n][k][oh][ow] with oh = (ih + ph - r*dh) / sh where that divides exactly and
// lies in the output, else 0: for stride > 1 the non-dividing taps are multiplied as zeros (wasted
// work, up to sh*sw times; decomposing by output phase would avoid it). grad_weight splits its long
// reduction (N*OH*OW pixels) over blocks and writes one partial GEMM per split; a second kernel sums
// the splits in a fixed order, so results are deterministic (no atomics). grad_bias sums grad_output
// per channel the same way.
//
// Reduction order: channel-major (c*R*S + r*S + s) for N,C,H,W tensors, tap-major ((r*S + s)*Cg + c)
// for N,H,W,C ones, so that consecutive k read consecutive channels there. The weight is reordered to
// (K, R, S, Cg) for N,H,W,C so that its rows stay contiguous along k.
//
// Forward and grad_input GEMMs with few tiles split their reduction (SplitDepth), like grad_weight.
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

#include "cuda/conv2d_kernels.h"

#include <memory>
#include <type_traits>
#include <vector>

#include "common/overrides.h"
#include "cuda/device_utils.cuh"

namespace fastdl::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

// ---- index arithmetic ------------------------------------------------------------------------------

// Division of non-negative values by a fixed positive divisor.
template <typename I>
struct Divisor {
  I d;
  Divisor() = default;
  explicit Divisor(int64_t divisor) : d(I(divisor)) {}
  FASTDL_HOST_DEVICE I div(I n) const { return n / d; }
};

// int32: multiply-high and shift (Granlund-Montgomery, as PyTorch's IntDivider) instead of a
// division loop. Dividends stay below 2^31 (fits_int32), so hi + n cannot wrap.
template <>
struct Divisor<int32_t> {
  int32_t d;
  uint32_t magic, shift;
  Divisor() = default;
  explicit Divisor(int64_t divisor) : d(int32_t(divisor)) {
    shift = 0;
    while ((uint64_t{1} << shift) < uint64_t(divisor)) ++shift;
    magic = uint32_t(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - uint64_t(divisor))) / uint64_t(divisor) + 1);
  }
  FASTDL_HOST_DEVICE int32_t div(int32_t n) const {
#ifdef __CUDA_ARCH__
    const uint32_t hi = __umulhi(uint32_t(n), magic);
#else
    const uint32_t hi = uint32_t((uint64_t(uint32_t(n)) * magic) >> 32);
#endif
    return int32_t((hi + uint32_t(n)) >> shift);
  }
};

// The sizes of one problem in the kernels' index type.
template <typename I>
struct Dims {
  I N, C, H, W, K, OH, OW, Cg, Kg, sh, sw, ph, pw, dh, dw, groups;
  Divisor<I> by_hw, by_w, by_ohw, by_ow, by_rs, by_s, by_cg, by_kg, by_sh, by_sw;
};

template <typename I>
Dims<I> dims_of(const Conv2dShape& s) {
  Dims<I> d;
  d.N = I(s.batch), d.C = I(s.in_channels), d.H = I(s.in_h), d.W = I(s.in_w), d.K = I(s.out_channels);
  d.OH = I(s.out_h), d.OW = I(s.out_w), d.Cg = I(s.in_per_group()), d.Kg = I(s.out_per_group());
  d.sh = I(s.stride_h), d.sw = I(s.stride_w);
  d.ph = I(s.pad_h), d.pw = I(s.pad_w), d.dh = I(s.dilation_h), d.dw = I(s.dilation_w), d.groups = I(s.groups);
  d.by_hw = Divisor<I>(s.in_h * s.in_w), d.by_w = Divisor<I>(s.in_w);
  d.by_ohw = Divisor<I>(s.out_h * s.out_w), d.by_ow = Divisor<I>(s.out_w);
  d.by_rs = Divisor<I>(s.taps()), d.by_s = Divisor<I>(s.kernel_w);
  d.by_cg = Divisor<I>(s.in_per_group()), d.by_kg = Divisor<I>(s.out_per_group());
  d.by_sh = Divisor<I>(s.stride_h), d.by_sw = Divisor<I>(s.stride_w);
  return d;
}

template <typename I>
struct Pixel {
  I n, y, x;
};

// Pixel m of a batch of planes of by_plane.d pixels, rows of by_width.d.
template <typename I>
FASTDL_HOST_DEVICE Pixel<I> pixel(I m, const Divisor<I>& by_plane, const Divisor<I>& by_width) {
  const I n = by_plane.div(m), p = m - n * by_plane.d, y = by_width.div(p);
  return {n, y, p - y * by_width.d};
}

template <typename I>
struct Tap {
  I c, r, s;
};

// Index j over (channel < by_ch.d, r, s) in the reduction order of layout L (see the top).
template <Layout L, typename I>
FASTDL_HOST_DEVICE Tap<I> tap(I j, const Divisor<I>& by_rs, const Divisor<I>& by_s, const Divisor<I>& by_ch) {
  I c, rs;
  if constexpr (L == Layout::nchw) {
    c = by_rs.div(j);
    rs = j - c * by_rs.d;
  } else {
    rs = by_ch.div(j);
    c = j - rs * by_ch.d;
  }
  const I r = by_s.div(rs);
  return {c, r, rs - r * by_s.d};
}

// Where element e of a (K, Cg, R, S) weight goes in its (K, R, S, Cg) reordering.
template <typename I>
struct TapMajor {
  Divisor<I> by_crs, by_rs;
  I cg;
  FASTDL_HOST_DEVICE I operator()(I e) const {
    const I k = by_crs.div(e), col = e - k * by_crs.d, c = by_rs.div(col);
    return k * by_crs.d + (col - c * by_rs.d) * cg + c;
  }
};

// 0 <= v < size (size >= 0), as one unsigned comparison.
template <typename I>
FASTDL_HOST_DEVICE bool inside(I v, I size) {
  using U = std::make_unsigned_t<I>;
  return U(v) < U(size);
}

// Range `split` of `splits` near-equal ranges of [0, count).
template <typename I>
FASTDL_HOST_DEVICE IndexRange<I> split_range(I count, I splits, I split) {
  const I chunk = (count + splits - 1) / splits;
  return {min_of<I>(count, split * chunk), min_of<I>(count, (split + 1) * chunk)};
}

// ---- the three GEMMs -------------------------------------------------------------------------------
//
// A problem P tells the tile kernel, for part z of its grid (a group, or a group and a split):
//   rows(), cols(), parts(), depth(z)     the GEMM's M, N, number of parts, and k range;
//   a_fix(m, z, ok), a_key(k),            where A[m][k] is: a per-row part computed once per tile, a
//   a_offset(fix, key)                    per-k part (the decoded tap or pixel), and from the two an
//                                         offset into `a`, or -1 for a zero;
//   b_fix(n, z, ok), b_key(k),            the same for B[k][n] and `b`.
//   b_offset(fix, key)
// A thread's loads of one slice meet one or two distinct k (slot() below), so the kernel decodes each
// k once and reuses it for every row: with the decode inside each load's offset, the forward's main
// loop was 915 instructions for 512 FFMAs (the divisions repeated per load, under branches).
//   row_offset(m, z) + col_offset(n, z)   where C[m][n] goes in `out`; bias_of(n, z) is added.
// Rows and columns past the end come as m = 0 (n = 0) with ok false and read zeros, so that no
// index is formed past the tensors; k is checked against depth(z) by the kernel.

template <typename T_, typename I_, Layout L>
struct ForwardGemm {
  using T = T_;
  using I = I_;
  using Out = T;
  // Coalesced: x along output pixels (N,C,H,W) or along channels (N,H,W,C); weight rows along k.
  static constexpr bool kAAlongK = L == Layout::nhwc, kBAlongK = true;
  Dims<I> d;
  const T* a;     // input
  const T* b;     // weight (K, Cg, R, S), or reordered (K, R, S, Cg) for N,H,W,C
  const T* bias;  // K values or null
  T* out;         // output

  FASTDL_HOST_DEVICE I rows() const { return d.N * d.by_ohw.d; }
  FASTDL_HOST_DEVICE I cols() const { return d.Kg; }
  FASTDL_HOST_DEVICE I parts() const { return d.groups; }
  FASTDL_HOST_DEVICE IndexRange<I> depth(I) const { return {0, d.Cg * d.by_rs.d}; }

  struct AFix {  // output pixel: offset of its image's group channels, window origin
    I base, ih, iw;
    bool ok;
  };
  FASTDL_HOST_DEVICE AFix a_fix(I m, I g, bool ok) const {
    const Pixel<I> q = pixel(m, d.by_ohw, d.by_ow);
    const I base = L == Layout::nchw ? (q.n * d.C + g * d.Cg) * d.by_hw.d : q.n * d.by_hw.d * d.C + g * d.Cg;
    return {base, q.y * d.sh - d.ph, q.x * d.sw - d.pw, ok};
  }
  struct AKey {  // tap: offset of its channel, kernel row and column offsets (dilated)
    I channel, r, s;
  };
  FASTDL_HOST_DEVICE AKey a_key(I k) const {
    const Tap<I> t = tap<L>(k, d.by_rs, d.by_s, d.by_cg);
    return {L == Layout::nchw ? t.c * d.by_hw.d : t.c, t.r * d.dh, t.s * d.dw};
  }
  FASTDL_HOST_DEVICE I a_offset(const AFix& f, const AKey& t) const {
    const I ih = f.ih + t.r, iw = f.iw + t.s;
    const I at = L == Layout::nchw ? f.base + t.channel + ih * d.W + iw : f.base + (ih * d.W + iw) * d.C + t.channel;
    return f.ok && inside(ih, d.H) && inside(iw, d.W) ? at : I(-1);
  }

  struct BFix {  // output channel: its weight row
    I base;
    bool ok;
  };
  using BKey = I;  // the weight row's element
  FASTDL_HOST_DEVICE BFix b_fix(I n, I g, bool ok) const { return {(g * d.Kg + n) * depth(g).end, ok}; }
  FASTDL_HOST_DEVICE BKey b_key(I k) const { return k; }
  FASTDL_HOST_DEVICE I b_offset(const BFix& f, BKey k) const { return f.ok ? f.base + k : I(-1); }

  FASTDL_HOST_DEVICE I row_offset(I m, I) const {
    if constexpr (L == Layout::nhwc) return m * d.K;
    const I n = d.by_ohw.div(m);
    return n * d.K * d.by_ohw.d + (m - n * d.by_ohw.d);
  }
  FASTDL_HOST_DEVICE I col_offset(I n, I g) const {
    return L == Layout::nchw ? (g * d.Kg + n) * d.by_ohw.d : g * d.Kg + n;
  }
  FASTDL_HOST_DEVICE Acc<T> bias_of(I n, I g) const { return bias != nullptr ? read(bias, g * d.Kg + n) : Acc<T>(0); }
};

template <typename T_, typename I_, Layout L>
struct GradInputGemm {
  using T = T_;
  using I = I_;
  using Out = T;
  // Coalesced: dy along input pixels (N,C,H,W) or channels (N,H,W,C); the weight along its taps
  // (N,C,H,W: runs of R*S) or, reordered, along input channels (N,H,W,C).
  static constexpr bool kAAlongK = L == Layout::nhwc, kBAlongK = L == Layout::nchw;
  Dims<I> d;
  const T* a;  // grad_output
  const T* b;  // weight (K, Cg, R, S), or reordered (K, R, S, Cg) for N,H,W,C
  T* out;      // grad_input

  FASTDL_HOST_DEVICE I rows() const { return d.N * d.by_hw.d; }
  FASTDL_HOST_DEVICE I cols() const { return d.Cg; }
  FASTDL_HOST_DEVICE I parts() const { return d.groups; }
  FASTDL_HOST_DEVICE IndexRange<I> depth(I) const { return {0, d.Kg * d.by_rs.d}; }

  struct AFix {  // input pixel: offset of its image's group channels in dy, padded position
    I base, y, x;
    bool ok;
  };
  FASTDL_HOST_DEVICE AFix a_fix(I m, I g, bool ok) const {
    const Pixel<I> q = pixel(m, d.by_hw, d.by_w);
    const I ohw = d.by_ohw.d;
    const I base = L == Layout::nchw ? (q.n * d.K + g * d.Kg) * ohw : q.n * ohw * d.K + g * d.Kg;
    return {base, q.y + d.ph, q.x + d.pw, ok};
  }
  struct AKey {  // tap: offset of its grad_output channel, kernel row and column offsets (dilated)
    I channel, r, s;
  };
  FASTDL_HOST_DEVICE AKey a_key(I k) const {
    const Tap<I> t = tap<L>(k, d.by_rs, d.by_s, d.by_kg);
    return {L == Layout::nchw ? t.c * d.by_ohw.d : t.c, t.r * d.dh, t.s * d.dw};
  }
  // A negative y or x divides as 0 and is dropped (no branch).
  FASTDL_HOST_DEVICE I a_offset(const AFix& f, const AKey& t) const {
    const I y = f.y - t.r, x = f.x - t.s;
    const I oh = d.by_sh.div(max_of<I>(y, 0)), ow = d.by_sw.div(max_of<I>(x, 0));
    const I at = L == Layout::nchw ? f.base + t.channel + oh * d.OW + ow : f.base + (oh * d.OW + ow) * d.K + t.channel;
    const bool ok = f.ok && y >= 0 && x >= 0 && oh * d.sh == y && ow * d.sw == x && oh < d.OH && ow < d.OW;
    return ok ? at : I(-1);
  }

  struct BFix {  // input channel c: offset of w[g*Kg][c][0][0] (or wt[g*Kg][0][0][c])
    I base;
    bool ok;
  };
  FASTDL_HOST_DEVICE BFix b_fix(I c, I g, bool ok) const {
    const I rs = d.by_rs.d, group = g * d.Kg * d.Cg * rs;
    return {L == Layout::nchw ? group + c * rs : group + c, ok};
  }
  using BKey = I;  // offset of (output channel, tap) from the input channel's base
  FASTDL_HOST_DEVICE BKey b_key(I k) const {
    const I rs = d.by_rs.d;
    if constexpr (L == Layout::nchw) {
      const I kk = d.by_rs.div(k);
      return kk * d.Cg * rs + (k - kk * rs);
    } else {
      const I t = d.by_kg.div(k);
      return ((k - t * d.Kg) * rs + t) * d.Cg;
    }
  }
  FASTDL_HOST_DEVICE I b_offset(const BFix& f, BKey key) const { return f.ok ? f.base + key : I(-1); }

  FASTDL_HOST_DEVICE I row_offset(I m, I) const {
    if constexpr (L == Layout::nhwc) return m * d.C;
    const I n = d.by_hw.div(m);
    return n * d.C * d.by_hw.d + (m - n * d.by_hw.d);
  }
  FASTDL_HOST_DEVICE I col_offset(I c, I g) const {
    return L == Layout::nchw ? (g * d.Cg + c) * d.by_hw.d : g * d.Cg + c;
  }
  FASTDL_HOST_DEVICE Acc<T> bias_of(I, I) const { return 0; }
};

// Parts z = g + groups * split; C goes to partials[split][g*Kg + n][m] (m in the reduction order
// of L), which sum_splits_kernel sums into grad_weight.
template <typename T_, typename I_, Layout L>
struct GradWeightGemm {
  using T = T_;
  using I = I_;
  using Out = Acc<T>;
  // Coalesced: x and dy along output pixels (N,C,H,W) or along channels (N,H,W,C).
  static constexpr bool kAAlongK = L == Layout::nchw, kBAlongK = L == Layout::nchw;
  Dims<I> d;
  const T* a;  // input
  const T* b;  // grad_output
  Acc<T>* out;
  I chunk;  // pixels per split

  FASTDL_HOST_DEVICE I rows() const { return d.Cg * d.by_rs.d; }
  FASTDL_HOST_DEVICE I cols() const { return d.Kg; }
  FASTDL_HOST_DEVICE I parts() const { return d.groups * splits(); }
  FASTDL_HOST_DEVICE I pixels() const { return d.N * d.by_ohw.d; }
  FASTDL_HOST_DEVICE I splits() const { return (pixels() + chunk - 1) / chunk; }
  FASTDL_HOST_DEVICE IndexRange<I> depth(I z) const {
    const I begin = (z / d.groups) * chunk;
    return {begin, min_of<I>(pixels(), begin + chunk)};
  }

  struct AFix {  // tap: offset of its input channel, offset from the output pixel's position
    I base, y, x;
    bool ok;
  };
  FASTDL_HOST_DEVICE AFix a_fix(I m, I z, bool ok) const {
    const Tap<I> t = tap<L>(m, d.by_rs, d.by_s, d.by_cg);
    const I c = (z % d.groups) * d.Cg + t.c;
    return {L == Layout::nchw ? c * d.by_hw.d : c, t.r * d.dh - d.ph, t.s * d.dw - d.pw, ok};
  }
  struct AKey {  // output pixel: its image, and its window's origin before padding
    I n, y, x;
  };
  FASTDL_HOST_DEVICE AKey a_key(I k) const {
    const Pixel<I> q = pixel(k, d.by_ohw, d.by_ow);
    return {q.n, q.y * d.sh, q.x * d.sw};
  }
  FASTDL_HOST_DEVICE I a_offset(const AFix& f, const AKey& q) const {
    const I ih = q.y + f.y, iw = q.x + f.x;
    const I at = L == Layout::nchw ? q.n * d.C * d.by_hw.d + f.base + ih * d.W + iw
                                   : ((q.n * d.H + ih) * d.W + iw) * d.C + f.base;
    return f.ok && inside(ih, d.H) && inside(iw, d.W) ? at : I(-1);
  }

  struct BFix {  // output channel: its offset in dy
    I base;
    bool ok;
  };
  FASTDL_HOST_DEVICE BFix b_fix(I n, I z, bool ok) const {
    const I k = (z % d.groups) * d.Kg + n;
    return {L == Layout::nchw ? k * d.by_ohw.d : k, ok};
  }
  using BKey = I;  // the output pixel's offset in dy, before its channel's
  FASTDL_HOST_DEVICE BKey b_key(I k) const {
    if constexpr (L == Layout::nhwc) return k * d.K;
    const I n = d.by_ohw.div(k);
    return n * d.K * d.by_ohw.d + (k - n * d.by_ohw.d);
  }
  FASTDL_HOST_DEVICE I b_offset(const BFix& f, BKey key) const { return f.ok ? key + f.base : I(-1); }

  FASTDL_HOST_DEVICE I row_offset(I m, I) const { return m; }
  FASTDL_HOST_DEVICE I col_offset(I n, I z) const { return (z * d.Kg + n) * rows(); }
  FASTDL_HOST_DEVICE Acc<T> bias_of(I, I) const { return 0; }
};

// A forward or grad_input GEMM P with its reduction split into `splits` ranges, for problems with too
// few tiles to fill the device (small batches of wide layers: ResNet-50's 512-channel 3x3 layer at
// batch 1 is 8 tiles deep 4608). Part z = g + groups * split writes its partial GEMM, row-major, to
// out[z][m][n]; sum() adds the splits in a fixed order, with the bias, into P's output
// (sum_split_gemm_kernel).
template <typename P>
struct SplitDepth {
  using T = typename P::T;
  using I = typename P::I;
  using Out = Acc<T>;
  static constexpr bool kAAlongK = P::kAAlongK, kBAlongK = P::kBAlongK;
  using AFix = typename P::AFix;
  using BFix = typename P::BFix;
  using AKey = typename P::AKey;
  using BKey = typename P::BKey;
  P p;
  const T* a;   // P's operands, read by the tile kernel
  const T* b;
  Acc<T>* out;  // the partial GEMMs, [parts()][rows()][cols()]
  I splits;

  SplitDepth(const P& problem, Acc<T>* partials, I split_count)
      : p(problem), a(problem.a), b(problem.b), out(partials), splits(split_count) {}

  FASTDL_HOST_DEVICE I rows() const { return p.rows(); }
  FASTDL_HOST_DEVICE I cols() const { return p.cols(); }
  FASTDL_HOST_DEVICE I parts() const { return p.parts() * splits; }
  FASTDL_HOST_DEVICE IndexRange<I> depth(I z) const {
    const IndexRange<I> all = p.depth(z % p.parts());
    const IndexRange<I> r = split_range<I>(all.end - all.begin, splits, z / p.parts());
    return {all.begin + r.begin, all.begin + r.end};
  }
  FASTDL_HOST_DEVICE AFix a_fix(I m, I z, bool ok) const { return p.a_fix(m, z % p.parts(), ok); }
  FASTDL_HOST_DEVICE AKey a_key(I k) const { return p.a_key(k); }
  FASTDL_HOST_DEVICE I a_offset(const AFix& f, const AKey& key) const { return p.a_offset(f, key); }
  FASTDL_HOST_DEVICE BFix b_fix(I n, I z, bool ok) const { return p.b_fix(n, z % p.parts(), ok); }
  FASTDL_HOST_DEVICE BKey b_key(I k) const { return p.b_key(k); }
  FASTDL_HOST_DEVICE I b_offset(const BFix& f, const BKey& key) const { return p.b_offset(f, key); }
  FASTDL_HOST_DEVICE I row_offset(I m, I z) const { return (z * p.rows() + m) * p.cols(); }
  FASTDL_HOST_DEVICE I col_offset(I n, I) const { return n; }
  FASTDL_HOST_DEVICE Acc<T> bias_of(I, I) const { return 0; }

  // Output element e of the whole problem as (part g, row m, column n), in the order that makes
  // consecutive e write consecutive addresses: rows (pixels) fastest for N,C,H,W, columns for N,H,W,C.
  FASTDL_HOST_DEVICE void sum(I e, bool rows_fastest) const {
    const I R = p.rows(), C = p.cols(), per_part = R * C, g = e / per_part, mn = e - g * per_part;
    const I m = rows_fastest ? mn % R : mn / C, n = rows_fastest ? mn / R : mn % C;
    Acc<T> total = p.bias_of(n, g);
    for (I split = 0; split < splits; ++split) total += out[((split * p.parts() + g) * R + m) * C + n];
    write(p.out, p.row_offset(m, g) + p.col_offset(n, g), total);
  }
};

// ---- the tile kernel -------------------------------------------------------------------------------

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
  int device = 0;
  cudaGetDevice(&device);
  if (device >= 64) device = 63;
  if (known[device] == 0) {
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaFuncAttributes attr{};
    bool yes = false;
    if (major >= 8) {
      if (cudaFuncGetAttributes(&attr, kernel) == cudaSuccess) {
        yes = attr.ptxVersion >= 80;
      } else {
        (void)cudaGetLastError();  // no image for this device: the FFMA tile's launch reports it
      }
    }
    known[device] = yes ? 1 : -1;
  }
  return known[device] > 0;
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
    thread.fetch(p, tile, tile.depth.begin);
    thread.stage(staged, 0);
    __syncthreads();
    int buf = 0;
    for (I k0 = tile.depth.begin; k0 < tile.depth.end; k0 += Cfg::BK) {
      const bool more = k0 + Cfg::BK < tile.depth.end;
      if (more) thread.fetch(p, tile, k0 + Cfg::BK);
      thread.multiply(staged, buf);
      if (more) thread.stage(staged, buf ^ 1);  // the other buffer: last read before the previous barrier
      __syncthreads();
      buf ^= 1;
    }
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

// ---- sums over splits, grad_bias, weight reordering ------------------------------------------------

// out[e] = sum over splits s, in order, of part[s * count + (kTapMajor ? order(e) : e)].
template <typename T, typename I, bool kTapMajor>
__global__ void __launch_bounds__(kThreads)
    sum_splits_kernel(const Acc<T>* __restrict__ part, T* __restrict__ out, I count, I splits, TapMajor<I> order) {
  for (I e = global_thread<I>(); e < count; e += grid_threads<I>()) {
    const I src = kTapMajor ? order(e) : e;
    Acc<T> sum = 0;
    for (I s = 0; s < splits; ++s) sum += part[s * count + src];
    write(out, e, sum);
  }
}

// A split GEMM's outputs: element e of every part's rows x cols (SplitDepth::sum).
template <typename S>
__global__ void __launch_bounds__(kThreads)
    sum_split_gemm_kernel(const S split, typename S::I count, bool rows_fastest) {
  using I = typename S::I;
  for (I e = global_thread<I>(); e < count; e += grid_threads<I>()) split.sum(e, rows_fastest);
}

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
    reorder_weight_kernel(const T* __restrict__ w, T* __restrict__ reordered, I count, TapMajor<I> order) {
  for (I e = global_thread<I>(); e < count; e += grid_threads<I>()) reordered[order(e)] = w[e];
}

// grad_bias partials, N,C,H,W: a block per (channel, split) sums its part of the channel's
// N*OH*OW values, threads along the planes.
template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
    bias_planes_kernel(const T* __restrict__ dy, Acc<T>* __restrict__ part, I channels, Divisor<I> by_plane,
                       I count, I splits) {
  using A = Acc<T>;
  __shared__ A warps[kThreads / kWarp];
  const I k = I(blockIdx.x) % channels, split = I(blockIdx.x) / channels;
  const IndexRange<I> r = split_range(count, splits, split);
  A sum = 0;
  for (I j = r.begin + I(threadIdx.x); j < r.end; j += kThreads) {
    const I n = by_plane.div(j);
    sum += read(dy, (n * channels + k) * by_plane.d + (j - n * by_plane.d));
  }
  for (int offset = kWarp / 2; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if (threadIdx.x % kWarp == 0) warps[threadIdx.x / kWarp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / kWarp; ++w) sum += warps[w];
    part[split * channels + k] = sum;
  }
}

// grad_bias partials, N,H,W,C: a block of kWarp channels x 8 rows per (channel group, split),
// threads along the channels.
template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
    bias_rows_kernel(const T* __restrict__ dy, Acc<T>* __restrict__ part, I channels, I rows, I splits) {
  using A = Acc<T>;
  constexpr int kRows = kThreads / kWarp;
  __shared__ A sums[kRows][kWarp];
  const I chunks = (channels + kWarp - 1) / kWarp;
  const I c = (I(blockIdx.x) % chunks) * kWarp + I(threadIdx.x), split = I(blockIdx.x) / chunks;
  const IndexRange<I> r = split_range(rows, splits, split);
  A sum = 0;
  if (c < channels) {
    for (I row = r.begin + I(threadIdx.y); row < r.end; row += kRows) sum += read(dy, row * channels + c);
  }
  sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    for (int y = 1; y < kRows; ++y) sum += sums[y][threadIdx.x];
    part[split * channels + c] = sum;
  }
}

// ---- planning --------------------------------------------------------------------------------------

// What a call needs besides its outputs, as byte offsets into the workspace: the reordered weight
// (N,H,W,C forward and grad_input), the partial GEMMs of a split forward or grad_input, and the
// per-split partials of grad_weight and grad_bias.
struct Plan {
  int64_t gemm_splits = 1, weight_chunk = 0, weight_splits = 0, bias_splits = 0;
  std::size_t reordered = 0, gemm_part = 0, weight_part = 0, bias_part = 0, bytes = 0;
  bool narrow = true;  // int32 indices
};

// Which of the tile kernel's GEMMs besides grad_weight a call runs.
enum class Pass { none, forward, grad_input };

// Splits of a forward or grad_input GEMM's reduction (SplitDepth): only when its tiles fill less
// than one wave of blocks; then enough for about two waves, none shorter than kMinDepth steps.
template <typename A>
int64_t depth_splits(int64_t rows, int64_t cols, int64_t depth, int64_t groups, int sms) {
  using Cfg = TileConfig<A, int32_t>;
  constexpr int64_t kMinDepth = 128, kMaxSplits = 64;
  const int64_t tiles = ((rows + Cfg::BM - 1) / Cfg::BM) * ((cols + Cfg::BN - 1) / Cfg::BN) * groups;
  if (tiles >= int64_t(sms) * Cfg::kMinBlocks || !override_or("FASTDL_CONV_SPLIT", true)) return 1;
  const int64_t wanted = (2 * int64_t(sms) * Cfg::kMinBlocks + tiles - 1) / tiles;
  return max_of<int64_t>(1, min_of<int64_t>(min_of(wanted, depth / kMinDepth), kMaxSplits));
}

template <typename A>
int64_t grad_weight_chunk(const Conv2dShape& s, int sms) {
  using Cfg = TileConfig<A, int32_t>;  // BK, which the index type changes, plays no part
  // Enough splits for two waves of blocks, none shorter than kMinPixels reduction steps.
  constexpr int64_t kMinPixels = 256;
  const int64_t pixels = s.batch * s.out_h * s.out_w;
  const int64_t tiles = ((s.in_per_group() * s.taps() + Cfg::BM - 1) / Cfg::BM) *
                        ((s.out_per_group() + Cfg::BN - 1) / Cfg::BN) * s.groups;
  const int64_t wanted = (2 * int64_t(sms) * Cfg::kMinBlocks + tiles - 1) / tiles;
  const int64_t splits = max_of<int64_t>(1, min_of<int64_t>(wanted, pixels / kMinPixels));
  return (pixels + splits - 1) / splits;
}

// As batch norm: about 4 blocks per multiprocessor, none summing fewer than ~1024 values.
int64_t grad_bias_splits(const Conv2dShape& s, int sms) {
  const int64_t values = s.batch * s.out_h * s.out_w;
  const bool planes = s.layout == Layout::nchw;
  const int64_t blocks = planes ? s.out_channels : (s.out_channels + kWarp - 1) / kWarp;
  const int64_t wanted = (4 * int64_t(sms) + blocks - 1) / blocks;
  const int64_t useful = planes ? values / 1024 : values / 32;
  return max_of<int64_t>(1, min_of<int64_t>(min_of<int64_t>(wanted, useful), 1024));
}

Plan plan(const Conv2dShape& s, DType dtype, Execution execution, bool reorder, Pass pass, bool grad_weight,
          bool grad_bias) {
  // The multiprocessors the splits spread over: the current device's, or the emulated one's.
  const int sms = execution == Execution::device ? sm_count() : kEmulatedMultiprocessors;
  const std::size_t element = dtype == DType::f64 ? 8 : dtype == DType::f32 ? 4 : 2;
  const std::size_t acc = dtype == DType::f64 ? 8 : 4;
  const auto aligned = [](std::size_t bytes) { return (bytes + 255) / 256 * 256; };
  Plan p;
  // Element offsets, and the window positions oh*sh - ph + r*dh (which huge strides, paddings or
  // dilations can push past the tensors' sizes).
  int64_t largest = max_of(max_of(s.input_numel(), s.output_numel()), s.weight_numel());
  largest = max_of(largest, s.stride_h * s.out_h + s.dilation_h * s.kernel_h + s.pad_h + s.in_h);
  largest = max_of(largest, s.stride_w * s.out_w + s.dilation_w * s.kernel_w + s.pad_w + s.in_w);
  // The tiles form an operand's offset before checking its bounds (a_offset): up to a kernel's reach
  // of rows and columns past the end of the input or grad_output.
  const int64_t reach_h = s.pad_h + s.dilation_h * s.kernel_h + s.stride_h;
  const int64_t reach_w = s.pad_w + s.dilation_w * s.kernel_w + s.stride_w;
  largest = max_of(largest, max_of(s.input_numel(), s.output_numel()) +
                                (reach_h * max_of(s.in_w, s.out_w) + reach_w) * max_of(s.in_channels, s.out_channels));
  if (reorder) p.bytes += aligned(element * std::size_t(s.weight_numel()));
  // Split reductions only where every index fits int32 (a problem that needs 64-bit indices has tiles
  // enough; run_gemm compiles no split for them).
  if (pass != Pass::none && fits_int32(largest) && execution != Execution::host_int64) {
    const bool forward = pass == Pass::forward;
    const int64_t rows = forward ? s.batch * s.out_h * s.out_w : s.batch * s.in_h * s.in_w;
    const int64_t cols = forward ? s.out_per_group() : s.in_per_group();
    const int64_t depth = (forward ? s.in_per_group() : s.out_per_group()) * s.taps();
    p.gemm_splits = dtype == DType::f64 ? depth_splits<double>(rows, cols, depth, s.groups, sms)
                                        : depth_splits<float>(rows, cols, depth, s.groups, sms);
    if (p.gemm_splits > 1) {
      const int64_t values = p.gemm_splits * s.groups * rows * cols;
      p.gemm_part = p.bytes;
      p.bytes += aligned(acc * std::size_t(values));
      largest = max_of(largest, values);
    }
  }
  if (grad_weight) {
    p.weight_chunk = dtype == DType::f64 ? grad_weight_chunk<double>(s, sms) : grad_weight_chunk<float>(s, sms);
    p.weight_splits = (s.batch * s.out_h * s.out_w + p.weight_chunk - 1) / p.weight_chunk;
    p.weight_part = p.bytes;
    p.bytes += aligned(acc * std::size_t(p.weight_splits * s.weight_numel()));
    largest = max_of(largest, p.weight_splits * s.weight_numel());
  }
  if (grad_bias) {
    p.bias_splits = grad_bias_splits(s, sms);
    p.bias_part = p.bytes;
    p.bytes += aligned(acc * std::size_t(p.bias_splits * s.out_channels));
    largest = max_of(largest, p.bias_splits * s.out_channels);
  }
  p.narrow = fits_int32(largest) && execution != Execution::host_int64;
  return p;
}

Plan plan(const Conv2dForwardArgs& a) {
  return plan(a.shape, a.dtype, a.execution, a.shape.layout == Layout::nhwc, Pass::forward, false, false);
}

Plan plan(const Conv2dBackwardArgs& a) {
  const bool grad_input = a.grad_input != nullptr;
  return plan(a.shape, a.dtype, a.execution, grad_input && a.shape.layout == Layout::nhwc,
              grad_input ? Pass::grad_input : Pass::none, a.grad_weight != nullptr, a.grad_bias != nullptr);
}

template <typename I>
TapMajor<I> tap_major(const Conv2dShape& s) {
  return {Divisor<I>(s.in_per_group() * s.taps()), Divisor<I>(s.taps()), I(s.in_per_group())};
}

// ---- running a call: launched on a stream, or emulated on the host -------------------------------

// Launches the kernels on `stream`.
struct Launcher {
  cudaStream_t stream;

  template <typename P>
  void gemm(const P& p) const {
    launch_gemm(p, stream);
  }
  template <typename S>
  void sum_split_gemm(const S& split, bool rows_fastest) const {
    const typename S::I count = split.p.parts() * split.p.rows() * split.p.cols();
    sum_split_gemm_kernel<S><<<grid_blocks(count, kThreads), kThreads, 0, stream>>>(split, count, rows_fastest);
  }
  template <typename T, typename I>
  void reorder_weight(const T* w, T* reordered, I count, TapMajor<I> order) const {
    reorder_weight_kernel<T, I><<<grid_blocks(count, kThreads), kThreads, 0, stream>>>(w, reordered, count, order);
  }
  template <typename T, typename I, bool kTapMajor>
  void sum_splits(const Acc<T>* part, T* out, I count, I splits, TapMajor<I> order) const {
    sum_splits_kernel<T, I, kTapMajor><<<grid_blocks(count, kThreads), kThreads, 0, stream>>>(part, out, count,
                                                                                                splits, order);
  }
  // grad_bias partials: part[split][k] for splits of the N*OH*OW values of every channel.
  template <typename T, typename I, Layout L>
  void bias_partials(const T* dy, Acc<T>* part, const Dims<I>& d, I splits) const {
    const I values = d.N * d.by_ohw.d;
    if constexpr (L == Layout::nchw) {
      bias_planes_kernel<T, I><<<unsigned(int64_t(d.K) * splits), kThreads, 0, stream>>>(dy, part, d.K, d.by_ohw,
                                                                                          values, splits);
    } else {
      const int64_t chunks = (int64_t(d.K) + kWarp - 1) / kWarp;
      bias_rows_kernel<T, I><<<unsigned(chunks * splits), dim3(kWarp, kThreads / kWarp), 0, stream>>>(
          dy, part, d.K, values, splits);
    }
  }
  cudaError_t status() const { return cudaGetLastError(); }
};

// Runs the same plan on host memory, for tests on machines without a GPU: the tile kernel's tiles one
// after another, each tile's threads one after another through each phase between two barriers (so
// shared-memory races are not detected, but every index, bound and buffer swap is exercised), and the
// small kernels as plain loops in their summation order. float and double only.
struct Emulator {
  bool tensor_cores = false;  // the tensor-core tile's logic (on float data) where the slices allow it

  template <typename P>
  void gemm(const P& p) const {
    using Cfg = TileConfig<Acc<typename P::T>, typename P::I>;
    if constexpr (Cfg::BK == 16 && std::is_same_v<typename P::T, float>) {
      if (tensor_cores) return run_tiles<Cfg, MmaThread<Cfg, P, float>>(p);
    }
    run_tiles<Cfg, GemmThread<Cfg, P>>(p);
  }
  template <typename Cfg, typename Thread, typename P>
  void run_tiles(const P& p) const {
    using I = typename P::I;
    const int64_t m_tiles = (int64_t(p.rows()) + Cfg::BM - 1) / Cfg::BM;
    const int64_t n_tiles = (int64_t(p.cols()) + Cfg::BN - 1) / Cfg::BN;
    const auto staged = std::make_unique<typename Thread::StagedSlices>();
    std::vector<Thread> threads(kThreads);
    for (int t = 0; t < kThreads; ++t) threads[t].t = t;
    for (int64_t index = 0; index < m_tiles * n_tiles * int64_t(p.parts()); ++index) {
      const Tile<I> tile = tile_at<Cfg>(p, index, m_tiles, n_tiles);
      for (auto& thread : threads) {
        thread.begin(p, tile);
        thread.fetch(p, tile, tile.depth.begin);
        thread.stage(*staged, 0);
      }
      int buf = 0;
      for (I k0 = tile.depth.begin; k0 < tile.depth.end; k0 += Cfg::BK) {
        const bool more = k0 + Cfg::BK < tile.depth.end;
        for (auto& thread : threads) {
          if (more) thread.fetch(p, tile, k0 + Cfg::BK);
          thread.multiply(*staged, buf);
          if (more) thread.stage(*staged, buf ^ 1);
        }
        buf ^= 1;
      }
      for (auto& thread : threads) thread.finish(p, tile);
    }
  }
  template <typename S>
  void sum_split_gemm(const S& split, bool rows_fastest) const {
    const typename S::I count = split.p.parts() * split.p.rows() * split.p.cols();
    for (typename S::I e = 0; e < count; ++e) split.sum(e, rows_fastest);
  }
  template <typename T, typename I>
  void reorder_weight(const T* w, T* reordered, I count, TapMajor<I> order) const {
    for (I e = 0; e < count; ++e) reordered[order(e)] = w[e];
  }
  template <typename T, typename I, bool kTapMajor>
  void sum_splits(const Acc<T>* part, T* out, I count, I splits, TapMajor<I> order) const {
    for (I e = 0; e < count; ++e) {
      const I src = kTapMajor ? order(e) : e;
      Acc<T> sum = 0;
      for (I s = 0; s < splits; ++s) sum += part[s * count + src];
      out[e] = T(sum);
    }
  }
  template <typename T, typename I, Layout L>
  void bias_partials(const T* dy, Acc<T>* part, const Dims<I>& d, I splits) const {
    const I values = d.N * d.by_ohw.d;
    for (I s = 0; s < splits; ++s) {
      const IndexRange<I> r = split_range(values, splits, s);
      for (I k = 0; k < d.K; ++k) {
        Acc<T> sum = 0;
        for (I j = r.begin; j < r.end; ++j) {
          const I n = d.by_ohw.div(j);
          sum += L == Layout::nchw ? dy[(n * d.K + k) * d.by_ohw.d + (j - n * d.by_ohw.d)] : dy[j * d.K + k];
        }
        part[s * d.K + k] = sum;
      }
    }
  }
  cudaError_t status() const { return cudaSuccess; }
};

// The compilation units (see the top), and whether this one instantiates the kernels of element type T.
#define FASTDL_CONV_UNIT_F32 0
#define FASTDL_CONV_UNIT_F64 1
#define FASTDL_CONV_UNIT_16BIT 2
template <typename T>
constexpr bool kInThisUnit = FASTDL_CONV_UNIT == FASTDL_CONV_UNIT_16BIT ? kTensorCoreType<T>
                             : FASTDL_CONV_UNIT == FASTDL_CONV_UNIT_F64 ? std::is_same_v<T, double>
                                                                        : std::is_same_v<T, float>;

// Runs body(TypeTag<T>, TypeTag<I>, LayoutTag<L>) for the dtypes of this unit; the emulator takes float
// and double only.
template <typename Exec, typename Body>
cudaError_t dispatch(DType dtype, bool narrow, Layout layout, Body&& body) {
  return dispatch_dtype(dtype, [&](auto t) {
    using T = typename decltype(t)::type;
    if constexpr (!kInThisUnit<T> || (std::is_same_v<Exec, Emulator> && !std::is_floating_point_v<T>)) {
      return cudaErrorNotSupported;
    } else {
      return dispatch_index(narrow, [&](auto i) {
        return dispatch_layout(layout, [&](auto l) { return body(t, i, l); });
      });
    }
  });
}

// Runs the forward or grad_input GEMM p (output in layout L), split over its reduction when the plan
// says so.
template <Layout L, typename Exec, typename P>
void run_gemm(const Exec& exec, const P& p, const Plan& plan, void* workspace) {
  using I = typename P::I;
  if constexpr (std::is_same_v<I, int64_t>) {
    return exec.gemm(p);  // the plan splits 32-bit problems only
  }
  if (plan.gemm_splits <= 1) return exec.gemm(p);
  auto* part = reinterpret_cast<Acc<typename P::T>*>(static_cast<char*>(workspace) + plan.gemm_part);
  const SplitDepth<P> split{p, part, I(plan.gemm_splits)};
  exec.gemm(split);
  exec.sum_split_gemm(split, L == Layout::nchw);  // N,C,H,W: the rows (pixels) are contiguous in the output
}

// The weight as the GEMMs of layout L read it: reordered to (K, R, S, Cg) in the workspace for N,H,W,C.
template <typename T, typename I, Layout L, typename Exec>
const T* gemm_weight(const Exec& exec, const Conv2dShape& s, const void* weight, void* workspace, const Plan& plan) {
  const T* w = static_cast<const T*>(weight);
  if constexpr (L == Layout::nchw) return w;
  T* reordered = reinterpret_cast<T*>(static_cast<char*>(workspace) + plan.reordered);
  exec.template reorder_weight<T, I>(w, reordered, I(s.weight_numel()), tap_major<I>(s));
  return reordered;
}

template <typename Exec>
cudaError_t run_forward(const Conv2dForwardArgs& a, const Exec& exec) {
  const Conv2dShape& s = a.shape;
  if (s.output_numel() == 0) return cudaSuccess;
  const Plan pl = plan(a);
  return dispatch<Exec>(a.dtype, pl.narrow, s.layout, [&](auto t, auto i, auto l) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    constexpr Layout L = decltype(l)::value;
    const T* w = gemm_weight<T, I, L>(exec, s, a.weight, a.workspace, pl);
    run_gemm<L>(exec, ForwardGemm<T, I, L>{dims_of<I>(s), static_cast<const T*>(a.input), w,
                                        static_cast<const T*>(a.bias), static_cast<T*>(a.output)},
             pl, a.workspace);
    return exec.status();
  });
}

template <typename Exec>
cudaError_t run_backward(const Conv2dBackwardArgs& a, const Exec& exec) {
  const Conv2dShape& s = a.shape;
  if (s.output_numel() == 0) return cudaSuccess;
  const Plan pl = plan(a);
  return dispatch<Exec>(a.dtype, pl.narrow, s.layout, [&](auto t, auto i, auto l) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    using A = Acc<T>;
    constexpr Layout L = decltype(l)::value;
    const Dims<I> d = dims_of<I>(s);
    const auto* dy = static_cast<const T*>(a.grad_output);
    const auto* x = static_cast<const T*>(a.input);
    char* ws = static_cast<char*>(a.workspace);
    if (a.grad_input != nullptr) {
      const T* w = gemm_weight<T, I, L>(exec, s, a.weight, a.workspace, pl);
      run_gemm<L>(exec, GradInputGemm<T, I, L>{d, dy, w, static_cast<T*>(a.grad_input)}, pl, a.workspace);
    }
    if (a.grad_weight != nullptr) {
      A* part = reinterpret_cast<A*>(ws + pl.weight_part);
      exec.gemm(GradWeightGemm<T, I, L>{d, x, dy, part, I(pl.weight_chunk)});
      exec.template sum_splits<T, I, L == Layout::nhwc>(part, static_cast<T*>(a.grad_weight), I(s.weight_numel()),
                                                         I(pl.weight_splits), tap_major<I>(s));
    }
    if (a.grad_bias != nullptr) {
      A* part = reinterpret_cast<A*>(ws + pl.bias_part);
      exec.template bias_partials<T, I, L>(dy, part, d, I(pl.bias_splits));
      exec.template sum_splits<T, I, false>(part, static_cast<T*>(a.grad_bias), d.K, I(pl.bias_splits),
                                            tap_major<I>(s));
    }
    return exec.status();
  });
}

// This unit's forward and backward, launched or emulated.
cudaError_t unit_forward(const Conv2dForwardArgs& args, cudaStream_t stream) {
  return args.execution == Execution::device ? run_forward(args, Launcher{stream})
                                             : run_forward(args, Emulator{args.execution == Execution::host_mma});
}

cudaError_t unit_backward(const Conv2dBackwardArgs& args, cudaStream_t stream) {
  return args.execution == Execution::device ? run_backward(args, Launcher{stream})
                                             : run_backward(args, Emulator{args.execution == Execution::host_mma});
}

}  // namespace

// The other units' entry points (conv2d_kernels_f64.cu, conv2d_kernels_16bit.cu).
cudaError_t conv2d_forward_f64(const Conv2dForwardArgs& args, cudaStream_t stream);
cudaError_t conv2d_backward_f64(const Conv2dBackwardArgs& args, cudaStream_t stream);
cudaError_t conv2d_forward_16bit(const Conv2dForwardArgs& args, cudaStream_t stream);
cudaError_t conv2d_backward_16bit(const Conv2dBackwardArgs& args, cudaStream_t stream);

}  // namespace fastdl::cuda
