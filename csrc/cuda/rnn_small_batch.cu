// CUDA kernels of the small-batch LSTM or GRU steps (rnn_small_batch.h). On a step, a block owns U
// hidden units (every gate of each; U = 1, 2 or 4, see run()) and runs two phases with a barrier
// between:
//
//   1. products: thread t computes a partial dot product of one gate row of W_hh (gate g, unit u)
//      with one row b of h_prev, over k = ks, ks + S, ks + 2S, ... The S threads of one (g, u, b) are
//      consecutive, so a warp reads runs of consecutive k (coalesced), and threads of the same gate
//      row read the same weights (one transaction). S is the largest power of two, at most 32, with
//      gates * U * rows * S <= 256 threads: the fewer the rows, the more each product is split.
//   2. cells: thread (u, b) sums its gates' S partials, adds the input projection (and the GRU's
//      b_hh), runs the cell of common/rnn_gates.h and writes the new state, this step's output and
//      what backward keeps; the threads of rows that do not run at this step copy their state.
//
// Backward through time has the same two phases (StepBackwardBlock): the previous processed step's
// product d @ W_hh for the block's units, then this step's cell backward (rnn_small_batch.h).
//
// steps_kernel runs every step of a layer call: the blocks wait for each other between steps (a
// grid-wide barrier), and read what other blocks wrote in earlier steps (the state, d) with plain
// loads (read_fresh), not through the read-only cache. W_hh (gates * H * H values) stays in L2 from
// one step to the next at the hidden sizes of the benchmarks (1-4 MB), so a step is one pass over
// W_hh from L2 and a barrier. Both phases are __host__ __device__, so that the host emulation runs
// the same code on the CPU (float and double).

#include "cuda/rnn_small_batch.h"

#include <cooperative_groups.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/rnn_gates.h"
#include "cuda/device_utils.cuh"

namespace fastdl::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxUnits = 4;  // hidden units per block, at most
constexpr int64_t kEmulatedResidentBlocks = 16;  // the emulation's device: see run()
constexpr int kMaxSplits = 32;
static_assert(4 * kSmallBatchRows <= kThreads, "one thread per (gate row, batch row) at least, at 1 unit");

// The most units per block with one thread per (gate row, batch row) and per (unit, batch row).
int max_units(int64_t batch) { return int(std::min<int64_t>(kMaxUnits, kThreads / (4 * std::max<int64_t>(batch, 1)))); }

template <typename T>
FASTDL_HOST_DEVICE const T* typed(const void* p) { return static_cast<const T*>(p); }
template <typename T>
FASTDL_HOST_DEVICE T* typed(void* p) { return static_cast<T*>(p); }

// The largest power of two, at most kMaxSplits, with products * splits <= kThreads.
FASTDL_HOST_DEVICE int product_splits(int64_t products) {
  int splits = 1;
  while (splits < kMaxSplits && products * splits * 2 <= kThreads) splits *= 2;
  return splits;
}

// The sum of a(k) * b(k) over k = first, first + stride, ... < end, added in that order, its loads
// written kInFlight terms ahead of their products. A loop of one term at a time compiled to one L2
// round trip per term (each iteration's bound check sits between them; sm_90 SASS), which set the
// small-batch step's time on the H100; with this, ptxas keeps two terms' loads in flight (written
// without a GPU: bench/NOTES.md, LSTM/GRU CUDA 6). The sums are bitwise those of the plain loop.
constexpr int kInFlight = 8;

template <typename A, typename LoadA, typename LoadB>
FASTDL_HOST_DEVICE A strided_dot(int64_t first, int64_t end, int64_t stride, const LoadA& a, const LoadB& b) {
  A sum = A(0);
  int64_t k = first;
  for (; k + (kInFlight - 1) * stride < end; k += kInFlight * stride) {
    A x[kInFlight], y[kInFlight];
#pragma unroll
    for (int i = 0; i < kInFlight; ++i) {
      x[i] = a(k + i * stride);
      y[i] = b(k + i * stride);
    }
#pragma unroll
    for (int i = 0; i < kInFlight; ++i) sum += x[i] * y[i];
  }
  for (; k < end; k += stride) sum += a(k) * b(k);
  return sum;
}

// One block's work on a step; S (splits) threads per gate-row product.
template <typename T>
struct StepBlock {
  using A = Acc<T>;  // arithmetic, and the LSTM cell state
  using Act = rnn::ScalarAct<A>;
  RecurrentStep s;

  int units;   // hidden units per block
  int splits;  // threads per gate-row product

  FASTDL_HOST_DEVICE StepBlock(const RecurrentStep& a, int units)
      : s(a), units(units), splits(product_splits(a.gates * units * a.rows)) {}
  FASTDL_HOST_DEVICE int products() const { return s.gates * units * int(s.rows) * splits; }

  FASTDL_HOST_DEVICE void multiply(int64_t block, int t, A* partial) const {
    if (t >= products()) return;
    const int rows = int(s.rows), ks = t % splits, rest = t / splits, b = rest % rows, q = rest / rows;
    const int g = q / units, u = q - g * units;
    const int64_t H = s.hidden, j = block * units + u;
    A sum = A(0);
    if (j < H) {
      const T* w = typed<T>(s.w_hh) + (g * H + j) * H;
      const T* h = typed<T>(s.h_prev) + b * H;
      sum = strided_dot<A>(ks, H, splits, [&](int64_t k) { return read(w, k); },
                           [&](int64_t k) { return read_fresh(h, k); });
    }
    partial[t] = sum;
  }

  // The sum of gate g's partial products for unit u and row b.
  FASTDL_HOST_DEVICE A product(const A* partial, int g, int u, int b) const {
    const A* p = partial + ((g * units + u) * int(s.rows) + b) * splits;
    A sum = A(0);
    for (int ks = 0; ks < splits; ++ks) sum += p[ks];
    return sum;
  }

  FASTDL_HOST_DEVICE void finish(int64_t block, int t, const A* partial) const {
    const int batch = int(s.batch);
    if (t >= units * batch) return;
    const int u = t / batch, b = t - u * batch;
    const int64_t H = s.hidden, j = block * units + u, at = b * H + j;
    if (j >= H) return;
    if (b >= s.rows) {  // not running at this step: the state carries over
      write(typed<T>(s.h_next), at, read_fresh(typed<T>(s.h_prev), at));
      return;
    }
    const int64_t G = s.gates, row = b * G * H + j;
    const T* gi = typed<T>(s.gi) + row;
    if (G == 4) {
      A* c = typed<A>(s.c) + at;
      const auto a = [&](int g) { return read(gi, g * H) + product(partial, g, u, b); };
      const auto r = rnn::lstm_forward<Act>(a(0), a(1), a(2), a(3), *c);
      *c = r.c;
      write(typed<T>(s.h_next), at, r.h);
      write(typed<T>(s.out), at, r.h);
      if (s.saved != nullptr) {
        T* saved = typed<T>(s.saved) + b * 4 * H + j;
        write(saved, int64_t(0), r.gates.i);
        write(saved, H, r.gates.f);
        write(saved, 2 * H, r.gates.g);
        write(saved, 3 * H, r.gates.o);
      }
      if (s.cells != nullptr) typed<A>(s.cells)[at] = r.c;
    } else {
      const T* bias = s.b_hh != nullptr ? typed<T>(s.b_hh) + j : nullptr;
      const auto hid = [&](int g) { return product(partial, g, u, b) + (bias != nullptr ? read(bias, g * H) : A(0)); };
      const auto r = rnn::gru_forward<Act>(read(gi, int64_t(0)), read(gi, H), read(gi, 2 * H), hid(0), hid(1), hid(2),
                                           read_fresh(typed<T>(s.h_prev), at));
      write(typed<T>(s.h_next), at, r.h);
      write(typed<T>(s.out), at, r.h);
      if (s.saved != nullptr) {
        T* saved = typed<T>(s.saved) + b * 4 * H + j;
        write(saved, int64_t(0), r.gates.r);
        write(saved, H, r.gates.z);
        write(saved, 2 * H, r.gates.n);
        write(saved, 3 * H, r.gates.hn);
      }
    }
  }
};

// One block's work on a step of backward through time (rnn_small_batch.h, RecurrentStepBackward).
// Products: thread t = (ks * prev_rows + r) * U + u sums d_prev[r][q] W_hh[q][j] over q = ks, ks + S,
// ...: the U threads of a row read neighbouring weights W_hh[q][j..] (one transaction).
template <typename T>
struct StepBackwardBlock {
  using A = Acc<T>;
  using Act = rnn::ScalarAct<A>;
  RecurrentStepBackward s;

  int units;   // hidden units per block
  int splits;  // threads per product

  FASTDL_HOST_DEVICE StepBackwardBlock(const RecurrentStepBackward& a, int units)
      : s(a), units(units), splits(product_splits(units * a.prev_rows)) {}
  FASTDL_HOST_DEVICE int products() const { return units * int(s.prev_rows) * splits; }

  FASTDL_HOST_DEVICE void multiply(int64_t block, int t, A* partial) const {
    if (t >= products()) return;
    const int prev = int(s.prev_rows), u = t % units, rest = t / units, r = rest % prev, ks = rest / prev;
    const int64_t H = s.hidden, depth = s.gates * H, j = block * units + u;
    A sum = A(0);
    if (j < H) {
      const T* d = typed<T>(s.d_prev) + r * depth;
      const T* w = typed<T>(s.w_hh) + j;
      sum = strided_dot<A>(ks, depth, splits, [&](int64_t q) { return read_fresh(d, q); },
                           [&](int64_t q) { return read(w, q * H); });
    }
    partial[t] = sum;
  }

  FASTDL_HOST_DEVICE void finish(int64_t block, int t, const A* partial) const {
    const int batch = int(s.batch), prev = int(s.prev_rows);
    if (t >= units * batch) return;
    const int u = t / batch, r = t - u * batch;
    const int64_t H = s.hidden, j = block * units + u, at = r * H + j;
    if (j >= H) return;
    T* dh = typed<T>(s.dh) + at;
    A grad = read_fresh(dh, int64_t(0));
    if (r < prev) {
      for (int ks = 0; ks < splits; ++ks) grad += partial[(ks * prev + r) * units + u];
    }
    if (r >= s.rows) {  // not running at this step: its gradient is final
      write(dh, int64_t(0), grad);
      return;
    }
    if (s.grad_out != nullptr) grad += read(typed<T>(s.grad_out), at);
    const T* saved = typed<T>(s.saved) + r * 4 * H + j;
    if (s.gates == 4) {
      const rnn::LstmGates<A> gates{read(saved, int64_t(0)), read(saved, H), read(saved, 2 * H), read(saved, 3 * H)};
      A* dc = typed<A>(s.dc) + at;
      const auto b = rnn::lstm_backward<Act>(gates, typed<A>(s.cells)[at], typed<A>(s.c_prev)[at], grad, *dc);
      T* d = typed<T>(s.d) + r * 4 * H + j;
      write(d, int64_t(0), b.d.i);
      write(d, H, b.d.f);
      write(d, 2 * H, b.d.g);
      write(d, 3 * H, b.d.o);
      *dc = b.dc_prev;
      write(dh, int64_t(0), A(0));
    } else {
      const rnn::GruGates<A> gates{read(saved, int64_t(0)), read(saved, H), read(saved, 2 * H), read(saved, 3 * H)};
      const auto b = rnn::gru_backward(gates, read(typed<T>(s.h_prev), at), grad);
      T* d = typed<T>(s.d) + r * 3 * H + j;
      write(typed<T>(s.d_xn), at, b.dx_n);
      write(d, int64_t(0), b.dx_r);
      write(d, H, b.dx_z);
      write(d, 2 * H, b.dh_n);
      write(dh, int64_t(0), b.dh_prev);
    }
  }
};

template <typename Block>
__global__ void __launch_bounds__(kThreads) step_kernel(const Block work) {
  __shared__ typename Block::A partial[kThreads];
  work.multiply(blockIdx.x, int(threadIdx.x), partial);
  __syncthreads();
  work.finish(blockIdx.x, int(threadIdx.x), partial);
}

// Every step of a layer call in one launch: the blocks stay resident (cooperative launch) and wait
// for each other between steps, so that a step costs its work and a grid-wide barrier, not a launch.
template <typename Block>
__global__ void __launch_bounds__(kThreads) steps_kernel(const decltype(Block::s)* steps, int64_t count, int units) {
  __shared__ typename Block::A partial[kThreads];
  const cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  for (int64_t i = 0; i < count; ++i) {
    const Block work(steps[i], units);
    work.multiply(blockIdx.x, int(threadIdx.x), partial);
    __syncthreads();
    work.finish(blockIdx.x, int(threadIdx.x), partial);
    if (i + 1 < count) grid.sync();  // also a block barrier: partial is free again
  }
}

// How many blocks of the persistent kernel the current device holds at once (0: no cooperative launch).
template <typename Block>
int64_t resident_blocks() {
  int device = 0, sms = 0, per_sm = 0, cooperative = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, steps_kernel<Block>, kThreads, 0) != cudaSuccess) {
    cudaGetLastError();  // a failed query is not this op's error: take the launch per step
    return 0;
  }
  return cooperative != 0 ? int64_t(sms) * per_sm : 0;
}

int64_t blocks_for(int64_t hidden, int units) { return (hidden + units - 1) / units; }

// Runs Block<T> on steps[0, count) in order. Persistent where the blocks fit at once: one unit per
// block (the most blocks, the shortest products per thread), else 2 or 4 (as the batch allows:
// max_units); where even those do not fit, or without device_steps, a launch per step with 1 unit per
// block. Emulated on the host: each step's
// blocks one after another, with the units a device holding kEmulatedResidentBlocks would take, so
// that tests of small layers reach every U.
template <template <typename> class Block, typename Args>
cudaError_t run(const Args* steps, const Args* device_steps, int64_t count, DType dtype, cudaStream_t stream) {
  const int64_t hidden = steps[0].hidden;
  const auto persistent_units = [&](int64_t resident) {
    for (int units = 1; units <= max_units(steps[0].batch); units *= 2) {
      if (blocks_for(hidden, units) <= resident) return units;
    }
    return 0;
  };
  return dispatch_dtype(dtype, [&](auto type_tag) {
    using T = typename decltype(type_tag)::type;
    using Work = Block<T>;
    if (steps[0].execution == Execution::device) {
      const int units = device_steps != nullptr && count > 1 ? persistent_units(resident_blocks<Work>()) : 0;
      if (units > 0) {
        void* args[] = {const_cast<Args**>(&device_steps), &count, const_cast<int*>(&units)};
        return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(&steps_kernel<Work>),
                                           dim3(unsigned(blocks_for(hidden, units))), dim3(kThreads), args, 0, stream);
      }
      for (int64_t i = 0; i < count; ++i) {
        step_kernel<Work><<<unsigned(blocks_for(hidden, 1)), kThreads, 0, stream>>>(Work(steps[i], 1));
        if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
      }
      return cudaSuccess;
    }
    if constexpr (!std::is_floating_point_v<T>) {
      return cudaErrorNotSupported;
    } else {
      const int units = std::max(persistent_units(kEmulatedResidentBlocks), 1);
      const int64_t blocks = blocks_for(hidden, units);
      std::vector<Acc<T>> partial(kThreads);
      for (int64_t i = 0; i < count; ++i) {
        const Work work(steps[i], units);
        for (int64_t block = 0; block < blocks; ++block) {
          for (int t = 0; t < kThreads; ++t) work.multiply(block, t, partial.data());
          for (int t = 0; t < kThreads; ++t) work.finish(block, t, partial.data());
        }
      }
      return cudaSuccess;
    }
  });
}

bool valid_rows(int gates, int64_t rows, int64_t batch) {
  return (gates == 3 || gates == 4) && rows >= 0 && rows <= batch && batch <= kSmallBatchRows;
}

}  // namespace

cudaError_t recurrent_steps(const RecurrentStep* steps, const RecurrentStep* device_steps, int64_t count,
                            DType dtype, cudaStream_t stream) {
  if (count == 0 || steps[0].hidden == 0 || steps[0].batch == 0) return cudaSuccess;
  for (int64_t i = 0; i < count; ++i) {
    const RecurrentStep& s = steps[i];
    if (!valid_rows(s.gates, s.rows, s.batch) || s.rows < 1 || s.hidden != steps[0].hidden) {
      return cudaErrorInvalidValue;
    }
  }
  return run<StepBlock>(steps, device_steps, count, dtype, stream);
}

cudaError_t recurrent_steps_backward(const RecurrentStepBackward* steps, const RecurrentStepBackward* device_steps,
                                     int64_t count, DType dtype, cudaStream_t stream) {
  if (count == 0 || steps[0].hidden == 0 || steps[0].batch == 0) return cudaSuccess;
  for (int64_t i = 0; i < count; ++i) {
    const RecurrentStepBackward& s = steps[i];
    if (!valid_rows(s.gates, s.rows, s.batch) || !valid_rows(s.gates, s.prev_rows, s.batch) ||
        s.hidden != steps[0].hidden) {
      return cudaErrorInvalidValue;
    }
  }
  return run<StepBackwardBlock>(steps, device_steps, count, dtype, stream);
}

}  // namespace fastdl::cuda
