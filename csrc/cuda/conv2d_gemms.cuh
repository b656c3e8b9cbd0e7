#pragma once
// The CUDA convolution's passes as GEMMs over gathered operands (conv2d_kernels_impl.cuh), with the
// index arithmetic they decode pixels and taps with.
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

#include <type_traits>

#include "cuda/conv2d_kernels.h"
#include "cuda/device_utils.cuh"

namespace fastdl::cuda {
namespace {

constexpr int kThreads = 256;

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

}  // namespace
}  // namespace fastdl::cuda
