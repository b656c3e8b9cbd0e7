// The window arithmetic of common/pool2d_windows.h, checked by brute force: each axis's covering()
// is exactly the set of outputs whose window contains the position, taps() exactly the in-bounds
// taps, and the int32 copies agree with the int64 originals.

#include <algorithm>
#include <cstdint>
#include <iostream>

#include "common/pool2d_windows.h"

using namespace fastdl;

namespace {

int failures = 0;

void expect(bool ok, const char* what, int64_t a, int64_t b, int64_t c) {
  if (!ok && ++failures <= 20) std::cerr << "FAILED: " << what << " (" << a << ", " << b << ", " << c << ")\n";
}

bool contains(Range r, int64_t v) { return r.begin <= v && v < r.end; }

void check_max_axis() {
  for (int64_t in = 1; in <= 12; ++in)
    for (int64_t k = 1; k <= 5; ++k)
      for (int64_t s = 1; s <= 4; ++s)
        for (int64_t d = 1; d <= 3; ++d)
          for (int64_t p = 0; p <= k / 2; ++p)
            for (bool ceil : {false, true}) {
              const int64_t out = pool_output_size(in, k, p, s, d, ceil);
              if (out < 1) continue;
              const MaxAxis a{in, out, k, s, p, d};
              for (int64_t o = 0; o < out; ++o) {
                const Range t = a.taps(o);
                for (int64_t j = 0; j < k; ++j) {
                  const int64_t pos = a.start(o) + j * d;
                  expect(contains(t, j) == (pos >= 0 && pos < in), "MaxAxis::taps", in, o, j);
                }
                const auto t32 = a.narrow<int32_t>().taps(int32_t(o));
                expect(t32.begin == t.begin && t32.end == t.end, "MaxAxis int32 taps", in, o, 0);
              }
              for (int64_t i = 0; i < in; ++i) {
                const Range c = a.covering(i);
                for (int64_t o = 0; o < out; ++o) {
                  const bool spans = a.start(o) <= i && i <= a.start(o) + (k - 1) * d;
                  expect(contains(c, o) == spans, "MaxAxis::covering", in, i, o);
                }
              }
            }
}

void check_avg_axis() {
  for (int64_t in = 1; in <= 12; ++in)
    for (int64_t k = 1; k <= 5; ++k)
      for (int64_t s = 1; s <= 4; ++s)
        for (int64_t p = 0; p <= k / 2; ++p)
          for (bool ceil : {false, true})
            for (bool include_pad : {false, true}) {
              const int64_t out = pool_output_size(in, k, p, s, 1, ceil);
              if (out < 1) continue;
              const AvgAxis a{in, out, k, s, p, include_pad};
              for (int64_t i = 0; i < in; ++i) {
                const Range c = a.covering(i);
                for (int64_t o = 0; o < out; ++o) {
                  expect(contains(c, o) == contains(a.window(o), i), "AvgAxis::covering", in, i, o);
                }
              }
              for (int64_t o = 0; o < out; ++o) {
                // PyTorch's divisor factor: the window clipped to [.., in + pad), or to [0, in).
                const int64_t start = o * s - p, end = std::min(start + k, in + p);
                const int64_t expected = include_pad ? end - start : a.window(o).size();
                expect(a.weight(o) == expected, "AvgAxis::weight", in, o, expected);
                expect(a.window(o).size() > 0, "AvgAxis window is never empty", in, o, 0);
              }
            }
}

void check_adaptive_axis() {
  for (int64_t in = 1; in <= 20; ++in)
    for (int64_t out = 1; out <= 24; ++out) {
      const AdaptiveAxis a{in, out};
      for (int64_t i = 0; i < in; ++i) {
        const Range c = a.covering(i);
        for (int64_t o = 0; o < out; ++o) {
          expect(contains(c, o) == contains(a.window(o), i), "AdaptiveAxis::covering", in, out, i);
        }
      }
    }
}

void check_output_size() {
  // By definition, with extent e = (k-1)*d + 1 and window starts o*s - p: floor mode counts the
  // windows that end inside the padded input; ceil mode also counts windows that overhang its end
  // by less than a stride, as long as they start inside the input.
  for (int64_t in = 1; in <= 12; ++in)
    for (int64_t k = 1; k <= 5; ++k)
      for (int64_t s = 1; s <= 4; ++s)
        for (int64_t d = 1; d <= 3; ++d)
          for (int64_t p = 0; p <= k / 2; ++p) {
            const int64_t e = (k - 1) * d + 1;
            if (in + 2 * p < e) continue;  // no window fits: an error, checked elsewhere
            int64_t floor_count = 0, ceil_count = 0;
            for (int64_t o = 0; o < 64; ++o) {
              const int64_t start = o * s - p;
              floor_count += start + e <= in + p;
              ceil_count += start + e <= in + p + s - 1 && start < in;
            }
            expect(pool_output_size(in, k, p, s, d, false) == floor_count, "floor-mode output size", in, k, s);
            expect(pool_output_size(in, k, p, s, d, true) == ceil_count, "ceil-mode output size", in, k, s);
          }
}

}  // namespace

int main() {
  check_max_axis();
  check_avg_axis();
  check_adaptive_axis();
  check_output_size();
  if (failures == 0) std::cout << "test_pool2d_windows: all checks passed\n";
  return failures == 0 ? 0 : 1;
}
