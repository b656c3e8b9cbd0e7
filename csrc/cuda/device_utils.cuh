#pragma once
// Helpers shared by the .cu files: element conversions to the accumulation type, dtype dispatch, and
// launch geometry. No torch headers (they cost a minute of nvcc time per file).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "common/host_device.h"
#include "cuda/dtype.h"

namespace fastdl::cuda {

constexpr int kWarp = 32;  // threads of a warp

// Arithmetic happens in Acc<T>: float for float, half and bfloat16; double for double.
template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using Acc = typename AccOf<T>::type;

// torch builds CUDA code with the half/bfloat16 conversion operators disabled: convert explicitly.
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_acc(Acc<T> x) { return x; }
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Element reads and writes in the accumulation type, in kernels that also run on the host (the
// emulations that test the kernels' index arithmetic without a GPU, on float and double only).
template <typename T, typename I>
FASTDL_HOST_DEVICE Acc<T> read(const T* p, I offset) {
#ifdef __CUDA_ARCH__
  return to_acc(__ldg(p + offset));
#else
  return p[offset];
#endif
}

// A read of memory that other blocks of the same kernel wrote before a grid-wide barrier (persistent
// kernels): a plain load, since __ldg's read-only cache is not kept coherent within a kernel.
template <typename T, typename I>
FASTDL_HOST_DEVICE Acc<T> read_fresh(const T* p, I offset) {
#ifdef __CUDA_ARCH__
  return to_acc(p[offset]);
#else
  return p[offset];
#endif
}

template <typename T, typename I>
FASTDL_HOST_DEVICE void write(T* p, I offset, Acc<T> v) {
#ifdef __CUDA_ARCH__
  p[offset] = from_acc<T>(v);
#else
  p[offset] = T(v);
#endif
}

template <typename T> struct TypeTag { using type = T; };

// Calls f(TypeTag<T>{}) with the element type named by dt.
template <typename F>
cudaError_t dispatch_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::f32: return f(TypeTag<float>{});
    case DType::f64: return f(TypeTag<double>{});
    case DType::f16: return f(TypeTag<__half>{});
    case DType::bf16: return f(TypeTag<__nv_bfloat16>{});
  }
  return cudaErrorInvalidValue;
}

// Calls f(TypeTag<int32_t>{}) when every index the kernel forms stays below 2^31, else int64_t.
template <typename F>
cudaError_t dispatch_index(bool fits_int32, F&& f) {
  return fits_int32 ? f(TypeTag<int32_t>{}) : f(TypeTag<int64_t>{});
}

// Half the int32 range leaves room for a grid-stride step past the last element.
inline bool fits_int32(int64_t largest) { return largest <= std::numeric_limits<int32_t>::max() / 2; }

template <Layout L> using LayoutTag = std::integral_constant<Layout, L>;

// Calls f(LayoutTag<L>{}) for the layout named by `layout`.
template <typename F>
cudaError_t dispatch_layout(Layout layout, F&& f) {
  return layout == Layout::nhwc ? f(LayoutTag<Layout::nhwc>{}) : f(LayoutTag<Layout::nchw>{});
}

// A property of the current device, computed by look_up(device) once per device and kept in `cache`
// (one slot per device, T{} while unknown; look_up must not return T{}). Devices past the cache's
// end are looked up on every call. Threads that race on a first lookup each store the same value.
template <typename T, int N, typename LookUp>
T per_device(T (&cache)[N], LookUp&& look_up) {
  int device = 0;
  cudaGetDevice(&device);
  if (device < 0 || device >= N) return look_up(device);
  if (cache[device] == T{}) cache[device] = look_up(device);
  return cache[device];
}

// Multiprocessors of the current device.
inline int sm_count() {
  static int counts[64] = {};
  return per_device(counts, [](int device) {
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    return sms > 0 ? sms : 132;
  });
}

// The double-buffered loop of a block's GEMM tile over its depth [begin, end), BK at a time: every
// thread fetches slice k + 1 from global memory into registers while the block multiplies slice k from
// shared memory, then stages its registers into the other buffer (last read before the previous
// barrier). each_thread(f) runs f(thread) for every thread of the block, then a barrier: in a kernel,
// the calling thread and __syncthreads(); in the host emulations, the threads one after another. The
// threads' begin() runs before, their finish() after.
template <int BK, typename I, typename P, typename Tile, typename Staged, typename EachThread>
FASTDL_HOST_DEVICE void multiply_slices(const P& p, const Tile& tile, I begin, I end, Staged& staged,
                                        EachThread&& each_thread) {
  each_thread([&](auto& thread) {
    thread.fetch(p, tile, begin);
    thread.stage(staged, 0);
  });
  int buf = 0;
  for (I k0 = begin; k0 < end; k0 += BK) {
    const bool more = k0 + BK < end;
    each_thread([&](auto& thread) {
      if (more) thread.fetch(p, tile, k0 + BK);
      thread.multiply(staged, buf);
      if (more) thread.stage(staged, buf ^ 1);
    });
    buf ^= 1;
  }
}

// Blocks for a grid-stride loop over `total` items: enough to fill the device, capped so that huge
// tensors reuse threads instead of launching millions of blocks.
inline unsigned grid_blocks(int64_t total, int threads) {
  const int64_t wanted = (total + threads - 1) / threads;
  const int64_t cap = int64_t{sm_count()} * 32;
  return static_cast<unsigned>(wanted < cap ? (wanted > 0 ? wanted : 1) : cap);
}

// Grid-stride loop index helpers.
template <typename I>
__device__ __forceinline__ I global_thread() {
  return static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x;
}
template <typename I>
__device__ __forceinline__ I grid_threads() {
  return static_cast<I>(gridDim.x) * blockDim.x;
}

}  // namespace fastdl::cuda
