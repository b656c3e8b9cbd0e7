// The Winograd transforms of common/winograd.h, in double, for F(2x2,3x3), F(4x4,3x3) and F(2x2,5x5):
//  - each transform (filter G g G^T, input B^T d B, output A^T m A) equals the explicit matrix
//    products written out as plain loops over the matrices' entries;
//  - the matrices themselves are right: A^T [(G g G^T) .* (B^T d B)] A equals the direct r x r
//    cross-correlation of the patch d with g, for random d and g;
//  - the weight gradient's transforms are the adjoints: <A dY A^T, X> = <dY, A^T X A> and
//    <G^T X G, g> = <X, G g G^T> for random dY, X and g.

#include <cmath>
#include <cstdint>
#include <iostream>
#include <random>

#include "common/winograd.h"

using namespace fastdl;

namespace {

int failures = 0;

void expect_close(double got, double want, const char* what, int m, int r, int i, int j) {
  if (std::abs(got - want) > 1e-12 * (1 + std::abs(want)) && ++failures <= 20) {
    std::cerr << "FAILED: " << what << " F(" << m << "," << r << ") at (" << i << ", " << j << "): " << got
              << " vs " << want << "\n";
  }
}

// Y = L X R^T over plain arrays, L (r x k) and R (c x n) read through their at(i, j).
template <typename L, typename R, int K, int N>
void explicit_product(const double (&x)[K][N], double (&y)[L::kRows][R::kRows]) {
  for (int i = 0; i < L::kRows; ++i) {
    for (int j = 0; j < R::kRows; ++j) {
      double sum = 0;
      for (int a = 0; a < K; ++a) {
        for (int b = 0; b < N; ++b) sum += L::at(i, a) * x[a][b] * R::at(j, b);
      }
      y[i][j] = sum;
    }
  }
}

template <int N>
void fill(std::mt19937& rng, double (&x)[N][N]) {
  std::normal_distribution<double> normal;
  for (auto& row : x) {
    for (double& v : row) v = normal(rng);
  }
}

template <int N>
double dot(const double (&x)[N][N], const double (&y)[N][N]) {
  double sum = 0;
  for (int i = 0; i < N; ++i) {
    for (int j = 0; j < N; ++j) sum += x[i][j] * y[i][j];
  }
  return sum;
}

template <int M, int R>
void check(std::mt19937& rng) {
  constexpr int A = M + R - 1;
  using W = WinogradMatrices<M, R>;
  for (int trial = 0; trial < 20; ++trial) {
    double g[R][R], d[A][A];
    fill(rng, g);
    fill(rng, d);
    double u[A][A], u_ref[A][A], v[A][A], v_ref[A][A];
    winograd_filter_transform<M, double>(g, u);
    explicit_product<typename W::G, typename W::G>(g, u_ref);
    winograd_input_transform<M, double>(d, v);
    explicit_product<typename W::BT, typename W::BT>(d, v_ref);
    double prod[A][A];
    for (int i = 0; i < A; ++i) {
      for (int j = 0; j < A; ++j) {
        expect_close(u[i][j], u_ref[i][j], "filter transform", M, R, i, j);
        expect_close(v[i][j], v_ref[i][j], "input transform", M, R, i, j);
        prod[i][j] = u[i][j] * v[i][j];
      }
    }
    double y[M][M], y_ref[M][M];
    winograd_output_transform<M, double>(prod, y);
    explicit_product<typename W::AT, typename W::AT>(prod, y_ref);
    for (int i = 0; i < M; ++i) {
      for (int j = 0; j < M; ++j) {
        expect_close(y[i][j], y_ref[i][j], "output transform", M, R, i, j);
        double direct = 0;
        for (int r = 0; r < R; ++r) {
          for (int s = 0; s < R; ++s) direct += g[r][s] * d[i + r][j + s];
        }
        expect_close(y[i][j], direct, "Winograd tile vs direct correlation", M, R, i, j);
      }
    }
    double dy[M][M], x[A][A], dy_t[A][A], dg[R][R];
    fill(rng, dy);
    fill(rng, x);
    winograd_grad_output_transform<M, double>(dy, dy_t);
    winograd_output_transform<M, double>(x, y);
    expect_close(dot(dy_t, x), dot(dy, y), "grad_output transform vs the output transform's adjoint", M, R, 0, 0);
    winograd_filter_grad_transform<M, double>(x, dg);
    expect_close(dot(dg, g), dot(x, u), "filter gradient transform vs the filter transform's adjoint", M, R, 0, 0);
  }
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  check<2, 3>(rng);
  check<4, 3>(rng);
  check<2, 5>(rng);
  if (failures > 0) {
    std::cerr << failures << " failures\n";
    return 1;
  }
  std::cout << "winograd transforms: ok\n";
  return 0;
}
