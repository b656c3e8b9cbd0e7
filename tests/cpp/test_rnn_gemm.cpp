// cpu/rnn_gemm.h against a double-precision product: pack_panels (plain and transposed sources,
// parts stacked along K, column tails) and packed_product over every row-block size (1, 2, 3 and 4
// rows, and more), K not a multiple of the row kernels' k phases, writing and accumulating.

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <iostream>
#include <vector>

#include "cpu/rnn_gemm.h"

using namespace fastdl;

namespace {

int failures = 0;

template <typename T>
void check(int64_t M, int64_t N, const std::vector<int64_t>& ks, bool transposed, bool accumulate) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  std::vector<at::Tensor> parts;
  int64_t K = 0;
  for (int64_t k : ks) {
    // A transposed part is a weight's .t(): (N, k) contiguous, viewed as (k, N).
    parts.push_back(transposed ? at::randn({N, k}, opts).t() : at::randn({k, N}, opts));
    K += k;
  }
  const at::Tensor b = at::cat(parts);  // (K, N)
  const at::Tensor a = at::randn({M, K}, opts);
  const at::Tensor start = at::randn({M, N}, opts);
  at::Tensor out = accumulate ? start.clone() : at::full({M, N}, 7.0, opts);

  const at::Tensor packed = pack_panels<T>(parts);
  packed_product<T>(a.const_data_ptr<T>(), M, K, packed.const_data_ptr<T>(), K, N, out.data_ptr<T>(), N, accumulate);

  at::Tensor want = a.to(at::kDouble).mm(b.to(at::kDouble));
  if (accumulate) want += start.to(at::kDouble);
  const double scale = std::sqrt(double(K)) + 1.0;
  const double tol = (sizeof(T) == 4 ? 2e-6 : 1e-14) * scale;
  const double err = (out.to(at::kDouble) - want).abs().max().item<double>();
  if (!(err <= tol)) {
    ++failures;
    std::cerr << "FAIL " << (sizeof(T) == 4 ? "float" : "double") << " M=" << M << " N=" << N << " K=" << K
              << " parts=" << ks.size() << (transposed ? " transposed" : " plain")
              << (accumulate ? " accumulate" : " write") << ": max error " << err << " > " << tol << "\n";
  }
}

template <typename T>
void check_all() {
  const std::vector<std::vector<int64_t>> ks = {{1}, {3}, {8}, {17}, {9, 16, 1}, {33, 40}};
  for (int64_t M : {1, 2, 3, 4, 5, 6, 7, 9, 13}) {
    for (int64_t N : {1, 7, 16, 17, 40}) {
      for (const auto& k : ks) {
        for (bool transposed : {false, true}) {
          for (bool accumulate : {false, true}) check<T>(M, N, k, transposed, accumulate);
        }
      }
    }
  }
}

}  // namespace

int main() {
  at::manual_seed(0);
  check_all<float>();
  check_all<double>();
  if (failures > 0) {
    std::cerr << failures << " failures\n";
    return 1;
  }
  std::cout << "rnn_gemm: packed products match\n";
  return 0;
}
