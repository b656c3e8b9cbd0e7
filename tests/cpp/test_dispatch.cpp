// Calls fastdl's pooling ops through the dispatcher, as any C++ or Python caller does, and checks
// them against ATen's own ops, on the CPU and, when the library has CUDA kernels and a GPU is
// visible, on the GPU; a bad call must raise a c10::Error that names the argument.

#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/adaptive_avg_pool2d.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/avg_pool2d.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/max_pool2d_with_indices.h>
#include <ATen/ops/randn.h>

#include <iostream>
#include <string>
#include <tuple>
#include <vector>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::cerr << "FAILED: " << what << "\n";
    ++failures;
  }
}

c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

using IntList = at::IntArrayRef;

// The devices to check: the CPU, and CUDA if fastdl was built with it and a GPU is present.
std::vector<at::Device> devices() {
  std::vector<at::Device> out{at::kCPU};
  if (op("fastdl::max_pool2d").hasKernelForDispatchKey(c10::DispatchKey::CUDA) && at::hasCUDA()) {
    out.emplace_back(at::kCUDA);
  }
  return out;
}

void max_pool2d_matches_aten(at::Device device) {
  auto fn = op("fastdl::max_pool2d_with_indices")
                .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, IntList, IntList, IntList, IntList, bool)>();
  for (bool channels_last : {false, true}) {
    at::Tensor x = at::randn({2, 5, 17, 15}).to(device);
    if (channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
    auto [out, idx] = fn.call(x, {3, 3}, {2, 2}, {1, 1}, {1, 1}, true);
    auto [ref, ref_idx] = at::max_pool2d_with_indices(x, {3, 3}, {2, 2}, {1, 1}, {1, 1}, true);
    expect(at::equal(out, ref), "max_pool2d values equal ATen's");
    expect(at::equal(idx, ref_idx), "max_pool2d indices equal ATen's");
    expect(out.strides() == ref.strides(), "max_pool2d keeps the input's memory format");
  }
}

void average_pooling_matches_aten(at::Device device) {
  auto avg = op("fastdl::avg_pool2d")
                 .typed<at::Tensor(const at::Tensor&, IntList, IntList, IntList, bool, bool, std::optional<int64_t>)>();
  auto adaptive = op("fastdl::adaptive_avg_pool2d").typed<at::Tensor(const at::Tensor&, IntList)>();
  const at::Tensor x = at::randn({3, 4, 13, 11}).to(device);
  expect(at::allclose(avg.call(x, {3, 2}, {2, 1}, {1, 0}, true, false, std::nullopt),
                      at::avg_pool2d(x, {3, 2}, {2, 1}, {1, 0}, true, false, std::nullopt), 1e-5, 1e-6),
         "avg_pool2d matches ATen's");
  expect(at::allclose(adaptive.call(x, {4, 5}), at::adaptive_avg_pool2d(x, {4, 5}), 1e-5, 1e-6),
         "adaptive_avg_pool2d matches ATen's");
}

void bad_calls_name_the_argument() {
  auto fn = op("fastdl::max_pool2d").typed<at::Tensor(const at::Tensor&, IntList, IntList, IntList, IntList, bool)>();
  const at::Tensor x = at::randn({1, 2, 8, 8});
  try {
    fn.call(x, {0, 2}, {1, 1}, {0, 0}, {1, 1}, false);
    expect(false, "kernel_size 0 raises");
  } catch (const c10::Error& e) {
    expect(std::string(e.what_without_backtrace()).find("kernel_size") != std::string::npos,
           "the error names kernel_size");
  }
}

}  // namespace

int main() {
  for (const at::Device device : devices()) {
    std::cout << "test_dispatch: checking " << device << "\n";
    max_pool2d_matches_aten(device);
    average_pooling_matches_aten(device);
  }
  bad_calls_name_the_argument();
  if (failures == 0) std::cout << "test_dispatch: all checks passed\n";
  return failures == 0 ? 0 : 1;
}
