// The Winograd transforms of common/winograd.h, in double, for F(2x2,3x3) and F(4x4,3x3):
//  - each transform (filter G g G^T, input B^T d B, output A^T m A) equals the explicit matrix
//    products written out as plain loops over the matrices' entries;
//  - the matrices themselves are right: A^T [(G g G^T) .* (B^T d B)] A equals the direct 3x3
//    cross-correlation of the patch d with g, for random d and g.

#include <cmath>
#include <cstdint>
#include <iostream>
#include <random>

#include "common/winograd.h"

using namespace fastdl;

namespace {

int failures = 0;

void expect_close(double got, double want, const char* what, int m, int i, int j) {
  if (std::abs(got - want) > 1e-12 * (1 + std::abs(want)) && ++failures <= 20) {
    std::cerr << "FAILED: " << what << " F(" << m << ",3) at (" << i << ", " << j << "): " << got << " vs " << want
              << "\n";
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

template <int M>
void check(std::mt19937& rng) {
  constexpr int A = M + 2;
  using W = WinogradMatrices<M>;
  std::normal_distribution<double> normal;
  for (int trial = 0; trial < 20; ++trial) {
    double g[3][3], d[A][A];
    for (auto& row : g) {
      for (double& v : row) v = normal(rng);
    }
    for (auto& row : d) {
      for (double& v : row) v = normal(rng);
    }
    double u[A][A], u_ref[A][A], v[A][A], v_ref[A][A];
    winograd_filter_transform<M, double>(g, u);
    explicit_product<typename W::G, typename W::G>(g, u_ref);
    winograd_input_transform<M, double>(d, v);
    explicit_product<typename W::BT, typename W::BT>(d, v_ref);
    double prod[A][A];
    for (int i = 0; i < A; ++i) {
      for (int j = 0; j < A; ++j) {
        expect_close(u[i][j], u_ref[i][j], "filter transform", M, i, j);
        expect_close(v[i][j], v_ref[i][j], "input transform", M, i, j);
        prod[i][j] = u[i][j] * v[i][j];
      }
    }
    double y[M][M], y_ref[M][M];
    winograd_output_transform<M, double>(prod, y);
    explicit_product<typename W::AT, typename W::AT>(prod, y_ref);
    for (int i = 0; i < M; ++i) {
      for (int j = 0; j < M; ++j) {
        expect_close(y[i][j], y_ref[i][j], "output transform", M, i, j);
        double direct = 0;
        for (int r = 0; r < 3; ++r) {
          for (int s = 0; s < 3; ++s) direct += g[r][s] * d[i + r][j + s];
        }
        expect_close(y[i][j], direct, "Winograd tile vs direct correlation", M, i, j);
      }
    }
  }
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  check<2>(rng);
  check<4>(rng);
  if (failures > 0) {
    std::cerr << failures << " failures\n";
    return 1;
  }
  std::cout << "winograd transforms: ok\n";
  return 0;
}
