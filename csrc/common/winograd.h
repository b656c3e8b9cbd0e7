#pragma once
// Winograd minimal filtering F(m x m, r x r), shared by the CPU and CUDA kernels (no torch headers):
// F(2x2,3x3) and F(4x4,3x3), and F(2x2,5x5) (CPU only; csrc/cpu/winograd.cpp).
//
// An r x r cross-correlation of stride 1 computes an m x m block of outputs ("a tile") from the
// alpha x alpha input patch d under it, alpha = m + r - 1. With the 1-D algorithm F(m, r)
//
//   y = A^T [ (G g) .* (B^T d) ]         (g: r taps, d: alpha inputs, y: m outputs)
//
// nested along both axes, the 2-D tile is
//
//   Y = A^T [ U .* V ] A,    U = G g G^T (alpha x alpha),    V = B^T d B (alpha x alpha),
//
// and over C input channels the element-wise products become alpha^2 independent sums
// M[xi][k] = sum_c U[xi][k][c] V[xi][c] (xi = one of the alpha^2 positions): alpha^2 matrix products,
// after which one output transform per (tile, output channel) gives Y. Multiplications per output
// per channel: alpha^2 / m^2 instead of r^2, i.e. 16/4 = 4 (F(2,3), 2.25x fewer than 9), 36/16 = 2.25
// (F(4,3), 4x fewer) and 36/4 = 9 (F(2,5), 2.78x fewer than 25).
//
// The matrices come from the Chinese remainder theorem on the interpolation points of the
// polynomial product: F(2,3) uses the points 0, 1, -1 and infinity; F(4,3) and F(2,5) use 0, 1, -1,
// 2, -2 and infinity (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016). Row i
// of B^T evaluates the input polynomial's Lagrange-basis product at point i, row i of G evaluates the
// filter polynomial there, and A^T interpolates the product back (the point at infinity picks the
// leading coefficient). Small integer points keep the transforms' coefficients exact in binary
// floating point except G's 1/6, 1/12, 1/24 (and F(2,5)'s 1/3, 2/3), which is why F(4,3) and F(2,5)
// round more than F(2,3).
//
// F(m, r) is the transpose of the linear convolution of an m-term by an r-term polynomial evaluated
// at the alpha points (values V_m a and V_r g, multiplied, interpolated by V^-1): y = V_m^T [(V_r g)
// .* (V^-T d)]. So B^T = V^-T depends on the points alone, and F(2,5) shares F(4,3)'s B^T (same
// points, same row scaling). Its G is V_r (row i: the powers of point i) times the factors 1/4, -1/6,
// -1/6, 1/24, 1/24, 1 that balance B^T's row scaling, as F(4,3)'s G is; its A^T = V_2^T is the first
// two rows of F(4,3)'s but for the column of the point at infinity (0, 1: the leading coefficient of
// a degree-1 polynomial). Its float32 error is F(4,3)'s order (2e-6 relative L2 on 64 channels).

#include "common/host_device.h"

#if defined(__CUDACC__)
#define FASTDL_UNROLL _Pragma("unroll")
#else
#define FASTDL_UNROLL _Pragma("GCC unroll 8")
#endif

namespace fastdl {

// A transform matrix as a type: at(i, j) is a constant expression once loops are unrolled, in host
// and device code alike (a constexpr array member could not be read in device code).
#define FASTDL_WINOGRAD_MATRIX(NAME, ROWS, COLS, ...)                          \
  struct NAME {                                                                \
    static constexpr int kRows = ROWS, kCols = COLS;                           \
    static constexpr FASTDL_HOST_DEVICE double at(int i, int j) {              \
      constexpr double m[ROWS][COLS] = __VA_ARGS__;                            \
      return m[i][j];                                                          \
    }                                                                          \
  }

template <int M, int R = 3>
struct WinogradMatrices;

// F(2x2, 3x3): points 0, 1, -1, infinity.
template <>
struct WinogradMatrices<2, 3> {
  FASTDL_WINOGRAD_MATRIX(BT, 4, 4, {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}});
  FASTDL_WINOGRAD_MATRIX(G, 4, 3, {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}});
  FASTDL_WINOGRAD_MATRIX(AT, 2, 4, {{1, 1, 1, 0}, {0, 1, -1, -1}});
};

// F(4x4, 3x3): points 0, 1, -1, 2, -2, infinity.
template <>
struct WinogradMatrices<4, 3> {
  FASTDL_WINOGRAD_MATRIX(BT, 6, 6,
                         {{4, 0, -5, 0, 1, 0},
                          {0, -4, -4, 1, 1, 0},
                          {0, 4, -4, -1, 1, 0},
                          {0, -2, -1, 2, 1, 0},
                          {0, 2, -1, -2, 1, 0},
                          {0, 4, 0, -5, 0, 1}});
  FASTDL_WINOGRAD_MATRIX(G, 6, 3,
                         {{1.0 / 4, 0, 0},
                          {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                          {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                          {1.0 / 24, 1.0 / 12, 1.0 / 6},
                          {1.0 / 24, -1.0 / 12, 1.0 / 6},
                          {0, 0, 1}});
  FASTDL_WINOGRAD_MATRIX(AT, 4, 6, {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}});
};

// F(2x2, 5x5): the points of F(4x4, 3x3), hence its B^T.
template <>
struct WinogradMatrices<2, 5> {
  using BT = WinogradMatrices<4, 3>::BT;
  FASTDL_WINOGRAD_MATRIX(G, 6, 5,
                         {{1.0 / 4, 0, 0, 0, 0},
                          {-1.0 / 6, -1.0 / 6, -1.0 / 6, -1.0 / 6, -1.0 / 6},
                          {-1.0 / 6, 1.0 / 6, -1.0 / 6, 1.0 / 6, -1.0 / 6},
                          {1.0 / 24, 1.0 / 12, 1.0 / 6, 1.0 / 3, 2.0 / 3},
                          {1.0 / 24, -1.0 / 12, 1.0 / 6, -1.0 / 3, 2.0 / 3},
                          {0, 0, 0, 0, 1}});
  FASTDL_WINOGRAD_MATRIX(AT, 2, 6, {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 1}});
};

#undef FASTDL_WINOGRAD_MATRIX

// coefficient * x for a coefficient known at compile time once the loops are unrolled: 0, 1 and -1
// cost no multiplication. V is a scalar or a SIMD vector type constructible from the scalar S.
template <typename S, typename V>
FASTDL_HOST_DEVICE void add_scaled(V& acc, double coefficient, const V& x) {
  if (coefficient == 1) {
    acc = acc + x;
  } else if (coefficient == -1) {
    acc = acc - x;
  } else if (coefficient != 0) {
    acc = acc + x * V(S(coefficient));
  }
}

// acc = coefficient * x for the first nonzero term of a sum, acc += coefficient * x after it: a sum
// does not start from zero (0 + x costs an addition, which IEEE arithmetic may not drop), so a row
// of t nonzero coefficients costs t - 1 additions (plus its multiplications by other than +-1).
// Known at compile time once the loops are unrolled, as the coefficients are.
template <typename S, typename V>
FASTDL_HOST_DEVICE void add_term(V& acc, bool& started, double coefficient, const V& x) {
  if (coefficient == 0) return;
  if (started) {
    add_scaled<S>(acc, coefficient, x);
  } else {
    acc = coefficient == 1 ? x : x * V(S(coefficient));
    started = true;
  }
}

// Y = L X, with L (R x K) a transform matrix and X (K x N) values.
template <typename L, typename S, typename V, int N>
FASTDL_HOST_DEVICE void left_multiply(const V (&X)[L::kCols][N], V (&Y)[L::kRows][N]) {
  FASTDL_UNROLL
  for (int i = 0; i < L::kRows; ++i) {
    FASTDL_UNROLL
    for (int j = 0; j < N; ++j) {
      V acc(S(0));
      bool started = false;
      FASTDL_UNROLL
      for (int k = 0; k < L::kCols; ++k) add_term<S>(acc, started, L::at(i, k), X[k][j]);
      Y[i][j] = acc;
    }
  }
}

// Y = X L^T, with X (R x K) values and L (N x K) a transform matrix.
template <typename L, typename S, typename V, int R>
FASTDL_HOST_DEVICE void right_multiply_transposed(const V (&X)[R][L::kCols], V (&Y)[R][L::kRows]) {
  FASTDL_UNROLL
  for (int i = 0; i < R; ++i) {
    FASTDL_UNROLL
    for (int j = 0; j < L::kRows; ++j) {
      V acc(S(0));
      bool started = false;
      FASTDL_UNROLL
      for (int k = 0; k < L::kCols; ++k) add_term<S>(acc, started, L::at(j, k), X[i][k]);
      Y[i][j] = acc;
    }
  }
}

// Y = L^T X, with L (K x R) a transform matrix and X (K x N) values.
template <typename L, typename S, typename V, int N>
FASTDL_HOST_DEVICE void left_multiply_transposed(const V (&X)[L::kRows][N], V (&Y)[L::kCols][N]) {
  FASTDL_UNROLL
  for (int i = 0; i < L::kCols; ++i) {
    FASTDL_UNROLL
    for (int j = 0; j < N; ++j) {
      V acc(S(0));
      bool started = false;
      FASTDL_UNROLL
      for (int k = 0; k < L::kRows; ++k) add_term<S>(acc, started, L::at(k, i), X[k][j]);
      Y[i][j] = acc;
    }
  }
}

// Y = X L, with X (R x K) values and L (K x N) a transform matrix.
template <typename L, typename S, typename V, int R>
FASTDL_HOST_DEVICE void right_multiply(const V (&X)[R][L::kRows], V (&Y)[R][L::kCols]) {
  FASTDL_UNROLL
  for (int i = 0; i < R; ++i) {
    FASTDL_UNROLL
    for (int j = 0; j < L::kCols; ++j) {
      V acc(S(0));
      bool started = false;
      FASTDL_UNROLL
      for (int k = 0; k < L::kRows; ++k) add_term<S>(acc, started, L::at(k, j), X[i][k]);
      Y[i][j] = acc;
    }
  }
}

// The transforms below take M (the output tile) explicitly and read alpha and r off their arrays
// extents (alpha = M + r - 1), which pick the matrices.

// U = G g G^T: an r x r filter's alpha x alpha transform.
template <int M, typename S, typename V, int R, int A>
FASTDL_HOST_DEVICE void winograd_filter_transform(const V (&g)[R][R], V (&u)[A][A]) {
  static_assert(A == M + R - 1, "alpha = m + r - 1");
  using W = WinogradMatrices<M, R>;
  V t[A][R];
  left_multiply<typename W::G, S>(g, t);
  right_multiply_transposed<typename W::G, S>(t, u);
}

// V = B^T d B: an alpha x alpha input patch's transform.
template <int M, typename S, typename V, int A>
FASTDL_HOST_DEVICE void winograd_input_transform(const V (&d)[A][A], V (&v)[A][A]) {
  using W = WinogradMatrices<M, A - M + 1>;
  V t[A][A];
  left_multiply<typename W::BT, S>(d, t);
  right_multiply_transposed<typename W::BT, S>(t, v);
}

// Y = A^T M A: the m x m outputs of a tile from its alpha x alpha sums.
template <int M, typename S, typename V, int A>
FASTDL_HOST_DEVICE void winograd_output_transform(const V (&m)[A][A], V (&y)[M][M]) {
  using W = WinogradMatrices<M, A - M + 1>;
  V t[M][A];
  left_multiply<typename W::AT, S>(m, t);
  right_multiply_transposed<typename W::AT, S>(t, y);
}

// The weight gradient's transforms, the adjoints of the forward's. A tile computes
// Y = A^T (U .* V) A with U = G g G^T, so for a loss L with dL/dY = dY:
//   dL/dU = (A dY A^T) .* V   and   dL/dg = G^T (dL/dU) G,
// and over every tile, channel pair and image dL/dU[xi][k][c] = sum_tiles (A dY A^T)[xi][k] V[xi][c]:
// again alpha^2 matrix products, reducing over tiles instead of channels.

// A dY A^T: an m x m block of grad_output, transformed to alpha x alpha.
template <int M, typename S, typename V, int A>
FASTDL_HOST_DEVICE void winograd_grad_output_transform(const V (&dy)[M][M], V (&out)[A][A]) {
  using W = WinogradMatrices<M, A - M + 1>;
  V t[A][M];
  left_multiply_transposed<typename W::AT, S>(dy, t);
  right_multiply<typename W::AT, S>(t, out);
}

// G^T dU G: the r x r filter gradient from the alpha x alpha sums.
template <int M, typename S, typename V, int A, int R>
FASTDL_HOST_DEVICE void winograd_filter_grad_transform(const V (&du)[A][A], V (&dg)[R][R]) {
  static_assert(A == M + R - 1, "alpha = m + r - 1");
  using W = WinogradMatrices<M, R>;
  V t[R][A];
  left_multiply_transposed<typename W::G, S>(du, t);
  right_multiply<typename W::G, S>(t, dg);
}

}  // namespace fastdl
