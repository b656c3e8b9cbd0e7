// fastdl._C: loading this module registers every op (csrc/ops.cpp and the backend files are linked
// into it); the functions here only report how the extension was built. Ops never go through them.

#include <ATen/Parallel.h>
#include "common/outputs.h"
#include <pybind11/pybind11.h>

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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastdl's compiled kernels; the ops are torch.ops.fastdl.*";
  m.def("cuda_enabled", &cuda_enabled, "Whether the CUDA kernels were compiled in.");
  m.def("cuda_arch_list", &cuda_arch_list, "TORCH_CUDA_ARCH_LIST the CUDA kernels were built for.");
  m.def("cpu_capability", &cpu_capability, "SIMD level of the CPU kernels (DEFAULT, AVX2, AVX512).");
  m.def("cpu_supported", &cpu_supported, "Whether this CPU can run the CPU kernels as built.");
  m.def("num_threads", &at::get_num_threads, "Threads the CPU kernels split work over.");
  m.def("poison_outputs", &fastdl::poison_outputs,
        "Whether outputs start as NaN / -1 (FASTDL_POISON_OUTPUTS=1, set by the test suite).");
}
