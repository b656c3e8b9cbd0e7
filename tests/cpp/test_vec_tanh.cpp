// cpu/vec_tanh.h against double-precision tanh: every float32 pattern in steps of 13 (and the
// neighbours of the branch split) must be within 2 ulp, special values exact; float64 is at::vec's
// own tanh and is checked at a few points.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>

#include "cpu/vec_tanh.h"

using namespace fastdl;

namespace {

int failures = 0;

float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

float tanh_of(float x) {
  using V = at::vec::Vectorized<float>;
  float in[V::size()], out[V::size()];
  for (int i = 0; i < V::size(); ++i) in[i] = x;
  vec_tanh(V::loadu(in)).store(out);
  return out[V::size() - 1];
}

// Distance in units of the last place of the exact result, rounded to float.
double ulps(float got, double exact) {
  const float e = float(exact);
  const double ulp = std::nextafter(std::fabs(e), std::numeric_limits<float>::infinity()) - std::fabs(e);
  return std::fabs(double(got) - exact) / ulp;
}

void check(float x, double& worst, float& worst_x) {
  const double u = ulps(tanh_of(x), std::tanh(double(x)));
  if (u > worst) worst = u, worst_x = x;
  if (u > 2.0 && ++failures <= 20) std::cerr << "FAILED: tanh(" << x << ") off by " << u << " ulp\n";
}

}  // namespace

int main() {
  double worst = 0;
  float worst_x = 0;
  // Positive floats from the smallest subnormal to 12 (tanh(12) rounds to 1), and their negatives.
  const uint32_t last = [] { float t = 12.0f; uint32_t b; std::memcpy(&b, &t, sizeof b); return b; }();
  for (uint32_t b = 1; b <= last; b += 13) {
    check(from_bits(b), worst, worst_x);
    check(-from_bits(b), worst, worst_x);
  }
  float at_split = kTanhSplit;
  for (int i = 0; i < 64; ++i) at_split = std::nextafter(at_split, 0.0f);
  for (int i = 0; i < 128; ++i, at_split = std::nextafter(at_split, 1.0f)) check(at_split, worst, worst_x);

  const float inf = std::numeric_limits<float>::infinity();
  const auto expect_exact = [](float x, float want) {
    const float got = tanh_of(x);
    if (!(got == want && std::signbit(got) == std::signbit(want)) && ++failures <= 20)
      std::cerr << "FAILED: tanh(" << x << ") = " << got << ", expected " << want << "\n";
  };
  expect_exact(0.0f, 0.0f);
  expect_exact(-0.0f, -0.0f);
  expect_exact(inf, 1.0f);
  expect_exact(-inf, -1.0f);
  expect_exact(50.0f, 1.0f);
  expect_exact(-100.0f, -1.0f);
  if (!std::isnan(tanh_of(std::numeric_limits<float>::quiet_NaN())) && ++failures <= 20)
    std::cerr << "FAILED: tanh(NaN) is not NaN\n";

  using VD = at::vec::Vectorized<double>;
  for (double x : {-3.0, -0.1, 0.0, 0.3, 2.5}) {
    double got[VD::size()], want[VD::size()];
    vec_tanh(VD(x)).store(got);
    VD(x).tanh().store(want);
    if (got[0] != want[0] && ++failures <= 20) std::cerr << "FAILED: double tanh(" << x << ")\n";
  }
  std::cout << "vec_tanh: worst " << worst << " ulp at x = " << worst_x << "\n";
  if (failures) std::cerr << failures << " failures\n";
  return failures ? 1 : 0;
}
