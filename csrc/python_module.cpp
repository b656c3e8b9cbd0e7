// fastdl._C: loading this module registers every op (csrc/ops.cpp and the backend files are linked
// into it); the functions here report how the extension was built, and fastdl._C.eager holds direct
// bindings of the ops that the Python wrappers call in eager mode.

#include <ATen/Parallel.h>
#include "common/outputs.h"
#include <pybind11/pybind11.h>
#include <torch/extension.h>

#include "autograd/autograd_utils.h"

#include <string>

#define FASTDL_STRINGIFY_(x) #x
#define FASTDL_STRINGIFY(x) FASTDL_STRINGIFY_(x)

namespace {

bool cuda_enabled() {
#if FASTDL_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// setup.py passes the arch list as one token, ';' and spaces replaced by '_'.
std::string cuda_arch_list() {
#if FASTDL_WITH_CUDA && defined(FASTDL_CUDA_ARCHS)
  return FASTDL_STRINGIFY(FASTDL_CUDA_ARCHS);
#else
  return "";
#endif
}

// The vector instruction set the CPU kernels were compiled for (at::vec's CPU_CAPABILITY).
std::string cpu_capability() {
#if defined(CPU_CAPABILITY_AVX512)
  return "AVX512";
#elif defined(CPU_CAPABILITY_AVX2)
  return "AVX2";
#else
  return "DEFAULT";
#endif
}

// Whether this processor runs the instructions the CPU kernels were compiled with.
bool cpu_supported() {
#if defined(CPU_CAPABILITY_AVX512)
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#elif defined(CPU_CAPABILITY_AVX2)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return true;
#endif
}

// A direct binding of a registered op: the same dispatcher entry as torch.ops.fastdl.<name> (autograd,
// fake tensors, modes and all), typed, so that an eager call skips torch.ops' boxed path (schema
// matching and IValue stacks): 3 us instead of 6.3 for a small max pooling on the dev machine.
template <typename Sig>
struct Direct;
template <typename R, typename... Args>
struct Direct<R(Args...)> {
  static auto bind(const char* name) {
    const auto handle = fastdl::op<R(Args...)>(name);
    return [handle](Args... args) -> R { return handle.call(args...); };
  }
};

template <typename Sig>
void bind(pybind11::module_& m, const char* name) {
  m.def(name, Direct<Sig>::bind((std::string("fastdl::") + name).c_str()));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastdl's compiled kernels; the ops are torch.ops.fastdl.*";
  auto eager = m.def_submodule("eager", "fastdl's ops for eager calls: fastdl/ops/_eager.py");
  bind<fastdl::MaxPoolSig>(eager, "max_pool2d");
  bind<fastdl::MaxPoolIndicesSig>(eager, "max_pool2d_with_indices");
  bind<fastdl::AvgPoolSig>(eager, "avg_pool2d");
  bind<fastdl::AdaptiveSig>(eager, "adaptive_avg_pool2d");
  bind<fastdl::BatchNormSig>(eager, "batch_norm");
  bind<fastdl::BatchNormReluSig>(eager, "batch_norm_relu_inference");
  bind<fastdl::ConvSig>(eager, "conv2d");
  bind<fastdl::WinogradSig>(eager, "conv2d_winograd");
  bind<fastdl::LstmSig>(eager, "lstm_layer");
  bind<fastdl::GruSig>(eager, "gru_layer");
  m.def("cuda_enabled", &cuda_enabled, "Whether the CUDA kernels were compiled in.");
  m.def("cuda_arch_list", &cuda_arch_list, "TORCH_CUDA_ARCH_LIST the CUDA kernels were built for.");
  m.def("cpu_capability", &cpu_capability, "SIMD level of the CPU kernels (DEFAULT, AVX2, AVX512).");
  m.def("cpu_supported", &cpu_supported, "Whether this CPU can run the CPU kernels as built.");
  m.def("num_threads", &at::get_num_threads, "Threads the CPU kernels split work over.");
  m.def("poison_outputs", &fastdl::poison_outputs,
        "Whether outputs start as NaN / -1 (FASTDL_POISON_OUTPUTS=1, set by the test suite).");
}
