// CUDA kernels of one LSTM or GRU time step: a thread per (row, hidden unit) in a grid-stride loop,
// the gate math of common/rnn_gates.h in Acc<T> (float for float16/bfloat16, whose LSTM cell state
// stays float across steps). Reads of a unit's gates are strided by H between gates but coalesced
// across neighbouring units, as the matrices are row-major (rows, G*H).

#include "common/rnn_gates.h"
#include "cuda/device_utils.cuh"
#include "cuda/rnn_kernels.h"

namespace fastdl::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
using Act = rnn::ScalarAct<Acc<T>>;

template <typename T>
__device__ __forceinline__ const T* typed(const void* p) { return static_cast<const T*>(p); }
template <typename T>
__device__ __forceinline__ T* typed(void* p) { return static_cast<T*>(p); }

template <typename T, typename I>
__global__ void lstm_forward_kernel(rnn::LstmStepForward f, I rows, I hidden) {
  using A = Acc<T>;
  for (I idx = global_thread<I>(); idx < rows * hidden; idx += grid_threads<I>()) {
    const I r = idx / hidden, j = idx - r * hidden, g0 = r * 4 * hidden + j;
    const T* pre = typed<T>(f.pre) + g0;
    const auto a = [&](int k) { return to_acc(pre[k * hidden]); };
    A* c = typed<A>(f.c) + idx;
    const auto s = rnn::lstm_forward<Act<T>>(a(0), a(1), a(2), a(3), *c);
    *c = s.c;
    typed<T>(f.h)[idx] = from_acc<T>(s.h);
    typed<T>(f.out)[idx] = from_acc<T>(s.h);
    if (f.gates != nullptr) {
      T* g = typed<T>(f.gates) + g0;
      g[0] = from_acc<T>(s.gates.i);
      g[hidden] = from_acc<T>(s.gates.f);
      g[2 * hidden] = from_acc<T>(s.gates.g);
      g[3 * hidden] = from_acc<T>(s.gates.o);
    }
    if (f.cells != nullptr) typed<A>(f.cells)[idx] = s.c;
  }
}

template <typename T, typename I>
__global__ void lstm_backward_kernel(rnn::LstmStepBackward b, I rows, I hidden) {
  using A = Acc<T>;
  for (I idx = global_thread<I>(); idx < rows * hidden; idx += grid_threads<I>()) {
    const I r = idx / hidden, j = idx - r * hidden, g0 = r * 4 * hidden + j;
    const T* g = typed<T>(b.gates) + g0;
    const rnn::LstmGates<A> gates{to_acc(g[0]), to_acc(g[hidden]), to_acc(g[2 * hidden]), to_acc(g[3 * hidden])};
    A dh = to_acc(typed<T>(b.dh)[idx]);
    if (b.grad_out != nullptr) dh += to_acc(typed<T>(b.grad_out)[idx]);
    A* dc = typed<A>(b.dc) + idx;
    const auto d = rnn::lstm_backward<Act<T>>(gates, typed<A>(b.cells)[idx], typed<A>(b.c_prev)[idx], dh, *dc);
    T* dg = typed<T>(b.dgates) + g0;
    dg[0] = from_acc<T>(d.d.i);
    dg[hidden] = from_acc<T>(d.d.f);
    dg[2 * hidden] = from_acc<T>(d.d.g);
    dg[3 * hidden] = from_acc<T>(d.d.o);
    *dc = d.dc_prev;
  }
}

template <typename T, typename I>
__global__ void gru_forward_kernel(rnn::GruStepForward f, I rows, I hidden) {
  using A = Acc<T>;
  for (I idx = global_thread<I>(); idx < rows * hidden; idx += grid_threads<I>()) {
    const I r = idx / hidden, j = idx - r * hidden, g0 = r * 3 * hidden + j;
    const T* gi = typed<T>(f.gi) + g0;
    const T* gh = typed<T>(f.gh) + g0;
    const T* bias = f.b_hh != nullptr ? typed<T>(f.b_hh) + j : nullptr;
    const auto hid = [&](int k) {
      return to_acc(gh[k * hidden]) + (bias != nullptr ? to_acc(bias[k * hidden]) : A(0));
    };
    T* h = typed<T>(f.h) + idx;
    const auto s = rnn::gru_forward<Act<T>>(to_acc(gi[0]), to_acc(gi[hidden]), to_acc(gi[2 * hidden]), hid(0), hid(1),
                                            hid(2), to_acc(*h));
    *h = from_acc<T>(s.h);
    typed<T>(f.out)[idx] = from_acc<T>(s.h);
    if (f.saved != nullptr) {
      T* w = typed<T>(f.saved) + r * 4 * hidden + j;
      w[0] = from_acc<T>(s.gates.r);
      w[hidden] = from_acc<T>(s.gates.z);
      w[2 * hidden] = from_acc<T>(s.gates.n);
      w[3 * hidden] = from_acc<T>(s.gates.hn);
    }
  }
}

template <typename T, typename I>
__global__ void gru_backward_kernel(rnn::GruStepBackward b, I rows, I hidden) {
  using A = Acc<T>;
  for (I idx = global_thread<I>(); idx < rows * hidden; idx += grid_threads<I>()) {
    const I r = idx / hidden, j = idx - r * hidden, g0 = r * 3 * hidden + j;
    const T* w = typed<T>(b.saved) + r * 4 * hidden + j;
    const rnn::GruGates<A> gates{to_acc(w[0]), to_acc(w[hidden]), to_acc(w[2 * hidden]), to_acc(w[3 * hidden])};
    T* dh_at = typed<T>(b.dh) + idx;
    A dh = to_acc(*dh_at);
    if (b.grad_out != nullptr) dh += to_acc(typed<T>(b.grad_out)[idx]);
    const auto d = rnn::gru_backward(gates, to_acc(typed<T>(b.h_prev)[idx]), dh);
    T* dgh = typed<T>(b.dgh) + g0;
    typed<T>(b.dxn)[idx] = from_acc<T>(d.dx_n);
    dgh[0] = from_acc<T>(d.dx_r);
    dgh[hidden] = from_acc<T>(d.dx_z);
    dgh[2 * hidden] = from_acc<T>(d.dh_n);
    *dh_at = from_acc<T>(d.dh_prev);
  }
}

// Launches kernel<T, I>(args, rows, hidden) over rows * hidden threads; `gates` matrices of width
// gates * hidden bound the largest index formed.
template <template <typename, typename> class Kernel, typename Args>
cudaError_t launch(const Args& args, int gates, DType dtype, cudaStream_t stream) {
  const int64_t total = args.rows * args.hidden;
  if (total == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto type_tag) {
    using T = typename decltype(type_tag)::type;
    return dispatch_index(fits_int32(total * gates), [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      Kernel<T, I>::launch(args, I(args.rows), I(args.hidden), grid_blocks(total, kThreads), stream);
      return cudaGetLastError();
    });
  });
}

// Kernel templates as class templates, so launch() can take them as template template arguments.
#define FASTDL_RNN_KERNEL(Name, kernel, Args)                                                  \
  template <typename T, typename I>                                                            \
  struct Name {                                                                                \
    static void launch(const Args& a, I rows, I hidden, unsigned blocks, cudaStream_t stream) { \
      kernel<T, I><<<blocks, kThreads, 0, stream>>>(a, rows, hidden);                          \
    }                                                                                          \
  };

FASTDL_RNN_KERNEL(LstmForward, lstm_forward_kernel, rnn::LstmStepForward)
FASTDL_RNN_KERNEL(LstmBackward, lstm_backward_kernel, rnn::LstmStepBackward)
FASTDL_RNN_KERNEL(GruForward, gru_forward_kernel, rnn::GruStepForward)
FASTDL_RNN_KERNEL(GruBackward, gru_backward_kernel, rnn::GruStepBackward)
#undef FASTDL_RNN_KERNEL

}  // namespace

cudaError_t lstm_step_forward(const rnn::LstmStepForward& args, DType dtype, cudaStream_t stream) {
  return launch<LstmForward>(args, 4, dtype, stream);
}

cudaError_t lstm_step_backward(const rnn::LstmStepBackward& args, DType dtype, cudaStream_t stream) {
  return launch<LstmBackward>(args, 4, dtype, stream);
}

cudaError_t gru_step_forward(const rnn::GruStepForward& args, DType dtype, cudaStream_t stream) {
  return launch<GruForward>(args, 4, dtype, stream);
}

cudaError_t gru_step_backward(const rnn::GruStepBackward& args, DType dtype, cudaStream_t stream) {
  return launch<GruBackward>(args, 4, dtype, stream);
}

}  // namespace fastdl::cuda
