#pragma once
// The recurrent product of a CPU LSTM/GRU step: out[M, N] (+)= a[M, K] @ b[K, N] with the same b at
// every step. BLAS at these shapes is slow: measured on one Zen 3 core, 8 x 256 @ 256 x 1024 took
// 111 us in MKL (40% of the FMA peak) and 64 x 256 @ 256 x 1024 600 us (it repacks b on every
// call). Here b is packed once per layer call into panels of two vectors of columns, [N / P][K][P],
// and each panel is multiplied by four rows at a time with 8 vector accumulators held in registers;
// a panel (K * P values, 16 KB for K = 256 in float32) stays in L1 for the next rows: 47 us and
// 367 us for the two products. Batches above kSmallBatch use at::mm.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>

namespace fastdl {

constexpr int64_t kSmallBatch = 256;

template <typename T>
constexpr int64_t kPanel = 2 * at::vec::Vectorized<T>::size();

// b (K, N), any strides -> [ceil(N / P)][K][P], columns past N zero. A direct loop: ATen's
// permute-and-copy of the same took 2.4 ms for a 1024 x 256 float matrix (about 0.1 ms here).
template <typename T>
at::Tensor pack_panels(const at::Tensor& b) {
  const int64_t K = b.size(0), N = b.size(1), P = kPanel<T>, panels = (N + P - 1) / P;
  at::Tensor packed = at::empty({panels, K, P}, b.options());
  const T* src = b.const_data_ptr<T>();
  T* dst = packed.data_ptr<T>();
  const int64_t s0 = b.stride(0), s1 = b.stride(1);
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t c = 0; c < P; ++c) {
        const int64_t n = p * P + c;
        T* d = dst + p * K * P + c;
        for (int64_t k = 0; k < K; ++k) d[k * P] = n < N ? src[k * s0 + n * s1] : T(0);
      }
    }
  });
  return packed;
}

// Rows [0, rows) (rows <= 4) of a (row stride lda) times one panel -> `cols` <= P columns of out
// (row stride ldo). Always four rows (a short block repeats its last row and drops the extra
// results) in eight named accumulators: with an array of accumulators and a partial epilogue, GCC
// kept them in memory through the loop (measured 2.8x slower).
template <typename T>
void panel_product(const T* a, int64_t rows, int64_t lda, const T* panel, int64_t K, T* out, int64_t ldo,
                   int64_t cols, bool accumulate) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t L = V::size();
  const T* a0 = a;
  const T* a1 = a + std::min<int64_t>(1, rows - 1) * lda;
  const T* a2 = a + std::min<int64_t>(2, rows - 1) * lda;
  const T* a3 = a + std::min<int64_t>(3, rows - 1) * lda;
  V c00(T(0)), c01(T(0)), c10(T(0)), c11(T(0)), c20(T(0)), c21(T(0)), c30(T(0)), c31(T(0));
  for (int64_t k = 0; k < K; ++k) {
    const V w0 = V::loadu(panel + k * 2 * L), w1 = V::loadu(panel + k * 2 * L + L);
    const V x0(a0[k]), x1(a1[k]), x2(a2[k]), x3(a3[k]);
    c00 = at::vec::fmadd(x0, w0, c00);
    c01 = at::vec::fmadd(x0, w1, c01);
    c10 = at::vec::fmadd(x1, w0, c10);
    c11 = at::vec::fmadd(x1, w1, c11);
    c20 = at::vec::fmadd(x2, w0, c20);
    c21 = at::vec::fmadd(x2, w1, c21);
    c30 = at::vec::fmadd(x3, w0, c30);
    c31 = at::vec::fmadd(x3, w1, c31);
  }
  T tile[4][2 * L];
  c00.store(tile[0]), c01.store(tile[0] + L), c10.store(tile[1]), c11.store(tile[1] + L);
  c20.store(tile[2]), c21.store(tile[2] + L), c30.store(tile[3]), c31.store(tile[3] + L);
  for (int64_t r = 0; r < rows; ++r) {
    T* o = out + r * ldo;
    for (int64_t c = 0; c < cols; ++c) o[c] = accumulate ? o[c] + tile[r][c] : tile[r][c];
  }
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
