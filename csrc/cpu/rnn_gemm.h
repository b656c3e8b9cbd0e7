#pragma once
// The recurrent product of a CPU LSTM/GRU step: out[M, N] (+)= a[M, K] @ b[K, N] with the same b at
// every step. BLAS at these shapes is slow: measured on one Zen 3 core, 8 x 256 @ 256 x 1024 took
// 111 us in MKL (40% of the FMA peak) and 64 x 256 @ 256 x 1024 600 us (it repacks b on every
// call). Here b is packed once per layer call into panels of two vectors of columns, [N / P][K][P],
// and each panel is multiplied by four rows at a time (one or two for the last rows) with 8 vector
// accumulators held in registers; a panel (K * P values, 16 KB for K = 256 in float32) stays in L1
// for the next rows: 47 us and 367 us for the two products. Batches above kSmallBatch use at::mm.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fastdl {

constexpr int64_t kSmallBatch = 256;

template <typename T>
constexpr int64_t kPanel = 2 * at::vec::Vectorized<T>::size();

// The matrices `parts` (each (K_i, N), any strides) stacked along K -> [ceil(N / P)][sum K_i][P],
// columns past N zero. A direct loop: ATen's permute-and-copy of one 1024 x 256 float matrix took
// 2.4 ms (about 0.1 ms here).
template <typename T>
at::Tensor pack_panels(const std::vector<at::Tensor>& parts) {
  const int64_t N = parts.at(0).size(1), P = kPanel<T>, panels = (N + P - 1) / P;
  int64_t K = 0;
  for (const at::Tensor& b : parts) K += b.size(0);
  at::Tensor packed = at::empty({panels, K, P}, parts[0].options());
  T* dst = packed.data_ptr<T>();
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t cols = std::min(P, N - p * P);
      T* d = dst + p * K * P;
      // Row by row of the panel (column by column took 3x as long); a transposed source (a weight
      // matrix's .t(), contiguous along k) in 8 x 8 blocks through registers, 2.5x faster again.
      for (const at::Tensor& b : parts) {
        const T* src = b.const_data_ptr<T>() + p * P * b.stride(1);
        const int64_t s0 = b.stride(0), s1 = b.stride(1), rows = b.size(0);
        int64_t k = 0;
        if (s0 == 1 && cols == P) {
          for (; k + 8 <= rows; k += 8, d += 8 * P) {
            for (int64_t c = 0; c < P; c += 8) at::vec::transpose_mxn<T, 8, 8>(src + k + c * s1, s1, d + c, P);
          }
        }
        for (; k < rows; ++k, d += P) {
          for (int64_t c = 0; c < cols; ++c) d[c] = src[k * s0 + c * s1];
          for (int64_t c = cols; c < P; ++c) d[c] = T(0);
        }
      }
    }
  });
  return packed;
}

// R rows (1, 2 or 4) of a (row stride lda) times one panel -> `cols` <= P columns of out (row stride
// ldo). Eight named accumulators in four slots of two vectors: slot s takes row s % R at the k values
// of phase s / R (k = phase mod 4 / R), so that every row count keeps four independent chains of
// FMAs in flight; a row's result is the sum of its slots. (It used to run one row as four copies of
// it: LSTM hidden 256 inference at batch 1 went from 0.78x torch's speed to 0.99x.) With an array
// of accumulators and a partial epilogue, GCC kept them in memory through the loop (measured 2.8x
// slower); not inlined, so that no caller's code changes how they are allocated (inlined into an
// experimental fused LSTM step, it ran 25% slower).
template <typename T, int R>
C10_NOINLINE void panel_rows(const T* a, int64_t lda, const T* panel, int64_t K, T* out, int64_t ldo,
                             int64_t cols, bool accumulate) {
  static_assert(R == 1 || R == 2 || R == 4, "panel_rows: R must divide the four slots");
  using V = at::vec::Vectorized<T>;
  constexpr int64_t L = V::size(), U = 4 / R;
  const auto slot = [&](int s) { return a + (s % R) * lda + s / R; };
  const T *a0 = slot(0), *a1 = slot(1), *a2 = slot(2), *a3 = slot(3);
  const T *w0 = panel, *w1 = panel + (1 / R) * 2 * L, *w2 = panel + (2 / R) * 2 * L, *w3 = panel + (3 / R) * 2 * L;
  V c00(T(0)), c01(T(0)), c10(T(0)), c11(T(0)), c20(T(0)), c21(T(0)), c30(T(0)), c31(T(0));
  const int64_t main = K - K % U;
  for (int64_t k = 0; k < main; k += U) {
    const int64_t o = k * 2 * L;
    const V x0(a0[k]), x1(a1[k]), x2(a2[k]), x3(a3[k]);
    c00 = at::vec::fmadd(x0, V::loadu(w0 + o), c00);
    c01 = at::vec::fmadd(x0, V::loadu(w0 + o + L), c01);
    c10 = at::vec::fmadd(x1, V::loadu(w1 + o), c10);
    c11 = at::vec::fmadd(x1, V::loadu(w1 + o + L), c11);
    c20 = at::vec::fmadd(x2, V::loadu(w2 + o), c20);
    c21 = at::vec::fmadd(x2, V::loadu(w2 + o + L), c21);
    c30 = at::vec::fmadd(x3, V::loadu(w3 + o), c30);
    c31 = at::vec::fmadd(x3, V::loadu(w3 + o + L), c31);
  }
  T tile[4][2 * L];
  c00.store(tile[0]), c01.store(tile[0] + L), c10.store(tile[1]), c11.store(tile[1] + L);
  c20.store(tile[2]), c21.store(tile[2] + L), c30.store(tile[3]), c31.store(tile[3] + L);
  // Whole-vector loads and stores: scalar stores cannot forward to the vector loads that read the
  // results next (that stall was 5% of the step in the fused experiment, bench/NOTES.md LSTM/GRU 9).
  const int64_t lo_cols = std::min(L, cols), hi_cols = std::max<int64_t>(0, cols - L);
  for (int r = 0; r < R; ++r) {
    V lo = V::loadu(tile[r]), hi = V::loadu(tile[r] + L);
    for (int p = 1; p < U; ++p) lo = lo + V::loadu(tile[r + p * R]), hi = hi + V::loadu(tile[r + p * R] + L);
    for (int64_t k = main; k < K; ++k) {
      const V x(a[r * lda + k]);
      lo = at::vec::fmadd(x, V::loadu(panel + k * 2 * L), lo);
      hi = at::vec::fmadd(x, V::loadu(panel + k * 2 * L + L), hi);
    }
    T* o = out + r * ldo;
    if (accumulate) {
      lo = lo + V::loadu(o, lo_cols);
      if (hi_cols > 0) hi = hi + V::loadu(o + L, hi_cols);
    }
    if (lo_cols == L) lo.store(o); else lo.store(o, lo_cols);
    if (hi_cols == L) hi.store(o + L); else if (hi_cols > 0) hi.store(o + L, hi_cols);
  }
}

// Rows [0, rows) (rows <= 4) of a times one panel; three rows as two and one.
template <typename T>
void panel_product(const T* a, int64_t rows, int64_t lda, const T* panel, int64_t K, T* out, int64_t ldo,
                   int64_t cols, bool accumulate) {
  if (rows == 4) return panel_rows<T, 4>(a, lda, panel, K, out, ldo, cols, accumulate);
  if (rows == 1) return panel_rows<T, 1>(a, lda, panel, K, out, ldo, cols, accumulate);
  panel_rows<T, 2>(a, lda, panel, K, out, ldo, cols, accumulate);
  if (rows == 3) panel_rows<T, 1>(a + 2 * lda, lda, panel, K, out + 2 * ldo, ldo, cols, accumulate);
}

// out (M, N) (+)= a (M, K) @ b, with b given packed (pack_panels) and N its column count.
template <typename T>
void packed_product(const T* a, int64_t M, int64_t lda, const T* packed, int64_t K, int64_t N, T* out,
                    int64_t ldo, bool accumulate) {
  const int64_t P = kPanel<T>, panels = (N + P - 1) / P;
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, M * K * P));
  at::parallel_for(0, panels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t r = 0; r < M; r += 4) {
        panel_product(a + r * lda, std::min<int64_t>(4, M - r), lda, packed + p * K * P, K, out + r * ldo + p * P,
                      ldo, std::min(P, N - p * P), accumulate);
      }
    }
  });
}

}  // namespace fastdl
