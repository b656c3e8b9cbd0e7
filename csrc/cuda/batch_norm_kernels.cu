// CUDA kernels of batch normalization: forward (training and eval) and backward, in three steps.
//
// 1. Partials. A grid of (channel group, split of the channel's values) blocks; each thread
//    accumulates, in float (double for double input), forward a Welford count/mean/M2 of x - K with
//    K the channel's first value (common/batch_norm_math.h explains the shift), backward sum(dy)
//    and sum(dy * (x - mean)); the block merges its threads and writes one partial per (channel,
//    split). Planes (N,C,L and N,C,H,W): a block per (channel, split), threads over the channel's
//    values in memory order. Rows (N,C and channels-last): blocks of 32 channels x 8 rows, threads
//    along the channels, so that loads coalesce.
// 2. Finalize. A thread per channel merges its partials in double and writes save_mean and
//    save_invstd and the running statistics (forward) or grad_weight and grad_bias (backward), and
//    the channel's coefficients for step 3.
// 3. Elementwise. y = ((x - K) - (mean - K)) * scale + bias, or
//    dx = (dy - sum(dy)/n - (x - mean) * sum(dy (x - mean)) * invstd^2 / n) * invstd * w.
// Splits are chosen so that step 1 fills the GPU both for a few large channels (ResNet's first
// layers) and for many small ones (7x7 maps, N,C features).

#include "cuda/batch_norm_kernels.h"
#include "cuda/device_utils.cuh"

namespace fastdl::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = 8;  // rows layouts: blocks of kWarp channels x kRowsPerBlock rows

// ---- accumulators ----------------------------------------------------------------------------------

template <typename A>
struct Moments {  // Welford: count, mean and sum of squared deviations
  A n, mean, m2;

  __device__ void add(A y) {
    n += A(1);
    const A d = y - mean;
    mean += d / n;
    m2 += d * (y - mean);
  }
  __device__ void merge(const Moments& o) {
    if (o.n == A(0)) return;
    if (n == A(0)) {
      *this = o;
      return;
    }
    const A total = n + o.n, d = o.mean - mean;
    mean += d * (o.n / total);
    m2 += o.m2 + d * d * (n * (o.n / total));
    n = total;
  }
  __device__ Moments shuffled_down(int offset) const {
    return {__shfl_down_sync(0xffffffffu, n, offset), __shfl_down_sync(0xffffffffu, mean, offset),
            __shfl_down_sync(0xffffffffu, m2, offset)};
  }
};

template <typename A>
struct GradSums {  // sum(dy), sum(dy * (x - mean))
  A dy, dy_xmu;

  __device__ void merge(const GradSums& o) {
    dy += o.dy;
    dy_xmu += o.dy_xmu;
  }
  __device__ GradSums shuffled_down(int offset) const {
    return {__shfl_down_sync(0xffffffffu, dy, offset), __shfl_down_sync(0xffffffffu, dy_xmu, offset)};
  }
};

// Merges the accumulators of a one-dimensional block into thread 0's. Every thread must call it.
template <typename Acc>
__device__ Acc block_merge(Acc acc) {
  __shared__ Acc warps[kThreads / kWarp];
  for (int offset = kWarp / 2; offset > 0; offset /= 2) acc.merge(acc.shuffled_down(offset));
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) warps[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    acc = lane < int(blockDim.x / kWarp) ? warps[lane] : Acc{};
    for (int offset = kWarp / 2; offset > 0; offset /= 2) acc.merge(acc.shuffled_down(offset));
  }
  return acc;
}

// Merges the accumulators of a kWarp x kRowsPerBlock block down its rows, into the threads of row 0.
template <typename Acc>
__device__ Acc row_merge(Acc acc) {
  __shared__ Acc rows[kRowsPerBlock][kWarp];
  rows[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0) {
    for (int r = 1; r < kRowsPerBlock; ++r) acc.merge(rows[r][threadIdx.x]);
  }
  return acc;
}

// The range of values (planes: flat index n*HW + i; rows: row) of split `split` of `count`.
template <typename I>
__device__ IndexRange<I> split_range(I count, I splits, I split) {
  const I chunk = (count + splits - 1) / splits;
  return {split * chunk, min_of<I>(count, (split + 1) * chunk)};
}

// Where partials live in the workspace: three arrays of C * splits accumulators, then the four
// arrays of C per-channel coefficients of the elementwise step.
template <typename A>
struct Workspace {
  A* part[3];
  A* coef[4];
  __host__ Workspace(void* base, int64_t channels, int64_t splits) {
    A* p = static_cast<A*>(base);
    for (int i = 0; i < 3; ++i) part[i] = p + i * channels * splits;
    for (int i = 0; i < 4; ++i) coef[i] = p + 3 * channels * splits + i * channels;
  }
};

// ---- step 1: partials ------------------------------------------------------------------------------

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
    moments_planes_kernel(const T* __restrict__ x, I channels, I spatial, I count, I splits, Workspace<Acc<T>> ws) {
  using A = Acc<T>;
  const I c = blockIdx.x, split = blockIdx.y;
  const IndexRange<I> r = split_range(count, splits, split);
  const A shift = to_acc(x[c * spatial]);
  Moments<A> m{};
  for (I j = r.begin + I(threadIdx.x); j < r.end; j += I(blockDim.x)) {
    const I n = j / spatial;
    m.add(to_acc(x[(n * channels + c) * spatial + (j - n * spatial)]) - shift);
  }
  m = block_merge(m);
  if (threadIdx.x == 0) {
    ws.part[0][c * splits + split] = m.n;
    ws.part[1][c * splits + split] = m.mean;
    ws.part[2][c * splits + split] = m.m2;
  }
}

template <typename T, typename I>
__global__ void __launch_bounds__(kWarp * kRowsPerBlock)
    moments_rows_kernel(const T* __restrict__ x, I channels, I rows, I splits, Workspace<Acc<T>> ws) {
  using A = Acc<T>;
  const I c = I(blockIdx.x) * kWarp + threadIdx.x, split = blockIdx.y;
  const IndexRange<I> r = split_range(rows, splits, split);
  Moments<A> m{};
  if (c < channels) {
    const A shift = to_acc(x[c]);
    for (I row = r.begin + I(threadIdx.y); row < r.end; row += kRowsPerBlock) m.add(to_acc(x[row * channels + c]) - shift);
  }
  m = row_merge(m);
  if (threadIdx.y == 0 && c < channels) {
    ws.part[0][c * splits + split] = m.n;
    ws.part[1][c * splits + split] = m.mean;
    ws.part[2][c * splits + split] = m.m2;
  }
}

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
    grad_planes_kernel(const T* __restrict__ dy, const T* __restrict__ x, const Acc<T>* __restrict__ mean,
                       I channels, I spatial, I count, I splits, Workspace<Acc<T>> ws) {
  using A = Acc<T>;
  const I c = blockIdx.x, split = blockIdx.y;
  const IndexRange<I> r = split_range(count, splits, split);
  const A mu = mean[c];
  GradSums<A> g{};
  for (I j = r.begin + I(threadIdx.x); j < r.end; j += I(blockDim.x)) {
    const I n = j / spatial;
    const I off = (n * channels + c) * spatial + (j - n * spatial);
    const A d = to_acc(dy[off]);
    g.dy += d;
    g.dy_xmu += d * (to_acc(x[off]) - mu);
  }
  g = block_merge(g);
  if (threadIdx.x == 0) {
    ws.part[0][c * splits + split] = g.dy;
    ws.part[1][c * splits + split] = g.dy_xmu;
  }
}

template <typename T, typename I>
__global__ void __launch_bounds__(kWarp * kRowsPerBlock)
    grad_rows_kernel(const T* __restrict__ dy, const T* __restrict__ x, const Acc<T>* __restrict__ mean,
                     I channels, I rows, I splits, Workspace<Acc<T>> ws) {
  using A = Acc<T>;
  const I c = I(blockIdx.x) * kWarp + threadIdx.x, split = blockIdx.y;
  const IndexRange<I> r = split_range(rows, splits, split);
  GradSums<A> g{};
  if (c < channels) {
    const A mu = mean[c];
    for (I row = r.begin + I(threadIdx.y); row < r.end; row += kRowsPerBlock) {
      const A d = to_acc(dy[row * channels + c]);
      g.dy += d;
      g.dy_xmu += d * (to_acc(x[row * channels + c]) - mu);
    }
  }
  g = row_merge(g);
  if (threadIdx.y == 0 && c < channels) {
    ws.part[0][c * splits + split] = g.dy;
    ws.part[1][c * splits + split] = g.dy_xmu;
  }
}

// ---- step 2: per channel ---------------------------------------------------------------------------

template <typename P>
__device__ double load_param(const void* p, int64_t c) {
  return double(to_acc(static_cast<const P*>(p)[c]));
}

template <typename P>
__device__ void store_param(void* p, int64_t c, double v) {
  static_cast<P*>(p)[c] = from_acc<P>(Acc<P>(v));
}

template <typename T, typename P>
__global__ void finalize_forward_kernel(BatchNormForwardArgs a, int64_t splits, Workspace<Acc<T>> ws) {
  using A = Acc<T>;
  const BatchNormShape& s = a.shape;
  for (int64_t c = global_thread<int64_t>(); c < s.channels; c += grid_threads<int64_t>()) {
    double mean, var, shift;
    if (a.training) {
      double n = 0, mu = 0, m2 = 0;  // Chan's merge of the partials, in double
      for (int64_t k = 0; k < splits; ++k) {
        const double pn = ws.part[0][c * splits + k], pmu = ws.part[1][c * splits + k];
        if (pn == 0) continue;
        const double total = n + pn, d = pmu - mu;
        mu += d * pn / total;
        m2 += double(ws.part[2][c * splits + k]) + d * d * n * pn / total;
        n = total;
      }
      const T* x = static_cast<const T*>(a.input);
      shift = double(to_acc(x[s.layout == Layout::nchw ? c * s.spatial : c]));
      mean = shift + mu;
      var = m2 / n;
      if (a.running_mean != nullptr) {
        store_param<P>(a.running_mean, c, updated_running_mean(load_param<P>(a.running_mean, c), mean, a.momentum));
        store_param<P>(a.running_var, c, updated_running_var(load_param<P>(a.running_var, c), var, s.count(), a.momentum));
      }
    } else {
      mean = load_param<P>(a.running_mean, c);
      var = load_param<P>(a.running_var, c);
      shift = mean;
    }
    const double invstd = inverse_std(var, a.eps);
    static_cast<A*>(a.save_mean)[c] = A(mean);
    static_cast<A*>(a.save_invstd)[c] = A(invstd);
    const double w = a.weight != nullptr ? load_param<P>(a.weight, c) : 1.0;
    ws.coef[0][c] = A(shift);
    ws.coef[1][c] = A(mean - shift);
    ws.coef[2][c] = A(w * invstd);
    ws.coef[3][c] = A(a.bias != nullptr ? load_param<P>(a.bias, c) : 0.0);
  }
}

template <typename T, typename P>
__global__ void finalize_backward_kernel(BatchNormBackwardArgs a, int64_t splits, bool summed, Workspace<Acc<T>> ws) {
  using A = Acc<T>;
  const BatchNormShape& s = a.shape;
  for (int64_t c = global_thread<int64_t>(); c < s.channels; c += grid_threads<int64_t>()) {
    double dy = 0, dy_xmu = 0;
    for (int64_t k = 0; summed && k < splits; ++k) {
      dy += ws.part[0][c * splits + k];
      dy_xmu += ws.part[1][c * splits + k];
    }
    const double invstd = static_cast<const A*>(a.save_invstd)[c], n = double(s.count());
    const double w = a.weight != nullptr ? load_param<P>(a.weight, c) : 1.0;
    if (a.grad_weight != nullptr) store_param<P>(a.grad_weight, c, dy_xmu * invstd);
    if (a.grad_bias != nullptr) store_param<P>(a.grad_bias, c, dy);
    ws.coef[0][c] = static_cast<const A*>(a.save_mean)[c];
    ws.coef[1][c] = A(a.training ? dy / n : 0.0);
    ws.coef[2][c] = A(a.training ? dy_xmu * invstd * invstd / n : 0.0);
    ws.coef[3][c] = A(invstd * w);
  }
}

// ---- step 3: elementwise ---------------------------------------------------------------------------

template <Layout L, typename I>
__device__ __forceinline__ I channel_of(I e, I channels, I spatial) {
  if constexpr (L == Layout::nchw) {
    return (e / spatial) % channels;
  } else {
    return e % channels;
  }
}

template <typename T, typename I, Layout L, bool kRelu>
__global__ void __launch_bounds__(kThreads)
    normalize_kernel(const T* __restrict__ x, T* __restrict__ y, I channels, I spatial, I total,
                     Workspace<Acc<T>> ws) {
  for (I e = global_thread<I>(); e < total; e += grid_threads<I>()) {
    const I c = channel_of<L>(e, channels, spatial);
    auto v = ((to_acc(x[e]) - ws.coef[0][c]) - ws.coef[1][c]) * ws.coef[2][c] + ws.coef[3][c];
    if constexpr (kRelu) v = v > 0 || isnan(v) ? v : decltype(v)(0);
    y[e] = from_acc<T>(v);
  }
}

template <typename T, typename I, Layout L>
__global__ void __launch_bounds__(kThreads)
    grad_input_kernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx, I channels, I spatial,
                      I total, Workspace<Acc<T>> ws) {
  for (I e = global_thread<I>(); e < total; e += grid_threads<I>()) {
    const I c = channel_of<L>(e, channels, spatial);
    const auto centered = to_acc(dy[e]) - ws.coef[1][c] - (to_acc(x[e]) - ws.coef[0][c]) * ws.coef[2][c];
    dx[e] = from_acc<T>(centered * ws.coef[3][c]);
  }
}

// ---- launch ----------------------------------------------------------------------------------------

// Splits per channel group: enough blocks to fill the GPU (4 per multiprocessor), none with fewer
// than about a thousand values (planes) or 32 rows (rows layouts).
int64_t splits_for(const BatchNormShape& s) {
  const bool planes = s.layout == Layout::nchw;
  const int64_t groups = planes ? s.channels : (s.channels + kWarp - 1) / kWarp;
  const int64_t wanted = (4 * int64_t(sm_count()) + groups - 1) / max_of<int64_t>(groups, 1);
  const int64_t useful = max_of<int64_t>(1, planes ? s.count() / 1024 : s.count() / 32);
  return max_of<int64_t>(1, min_of<int64_t>(min_of<int64_t>(wanted, useful), 1024));
}

// Calls f(TypeTag<T>, TypeTag<P>) for the input type and the parameter type (the input's or, for
// float16 and bfloat16 inputs, possibly float32).
template <typename F>
cudaError_t dispatch_types(DType input, DType param, F&& f) {
  return dispatch_dtype(input, [&](auto t) {
    using T = typename decltype(t)::type;
    if constexpr (std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>) {
      if (param == DType::f32) return f(t, TypeTag<float>{});
    }
    return f(t, t);
  });
}

bool fits_int32(const BatchNormShape& s) { return cuda::fits_int32(s.numel()); }

}  // namespace

std::size_t batch_norm_workspace_bytes(const BatchNormShape& shape, DType input_type) {
  const std::size_t element = input_type == DType::f64 ? sizeof(double) : sizeof(float);
  return element * std::size_t(3 * shape.channels * splits_for(shape) + 4 * shape.channels);
}

cudaError_t batch_norm_forward(const BatchNormForwardArgs& a, cudaStream_t stream) {
  const BatchNormShape& s = a.shape;
  const int64_t splits = splits_for(s);
  return dispatch_types(a.input_type, a.param_type, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    const Workspace<Acc<T>> ws(a.workspace, s.channels, splits);
    const T* x = static_cast<const T*>(a.input);
    return dispatch_index(fits_int32(s), [&](auto i) {
      using I = typename decltype(i)::type;
      if (a.training) {
        if (s.layout == Layout::nchw) {
          moments_planes_kernel<T, I><<<dim3(unsigned(s.channels), unsigned(splits)), kThreads, 0, stream>>>(
              x, I(s.channels), I(s.spatial), I(s.count()), I(splits), ws);
        } else {
          const dim3 grid(unsigned((s.channels + kWarp - 1) / kWarp), unsigned(splits));
          moments_rows_kernel<T, I><<<grid, dim3(kWarp, kRowsPerBlock), 0, stream>>>(x, I(s.channels), I(s.count()),
                                                                                   I(splits), ws);
        }
      }
      finalize_forward_kernel<T, P><<<grid_blocks(s.channels, kThreads), kThreads, 0, stream>>>(a, splits, ws);
      if (s.numel() > 0) {
        dispatch_layout(s.layout, [&](auto l) {
          constexpr Layout L = decltype(l)::value;
          const unsigned blocks = grid_blocks(s.numel(), kThreads);
          if (a.relu) {
            normalize_kernel<T, I, L, true><<<blocks, kThreads, 0, stream>>>(x, static_cast<T*>(a.output),
                                                                            I(s.channels), I(s.spatial), I(s.numel()), ws);
          } else {
            normalize_kernel<T, I, L, false><<<blocks, kThreads, 0, stream>>>(x, static_cast<T*>(a.output),
                                                                             I(s.channels), I(s.spatial), I(s.numel()), ws);
          }
          return cudaSuccess;
        });
      }
      return cudaGetLastError();
    });
  });
}

cudaError_t batch_norm_backward(const BatchNormBackwardArgs& a, cudaStream_t stream) {
  const BatchNormShape& s = a.shape;
  const int64_t splits = splits_for(s);
  const bool summed = a.training || a.grad_weight != nullptr || a.grad_bias != nullptr;
  return dispatch_types(a.input_type, a.param_type, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    using A = Acc<T>;
    const Workspace<A> ws(a.workspace, s.channels, splits);
    const T* dy = static_cast<const T*>(a.grad_output);
    const T* x = static_cast<const T*>(a.input);
    const A* mean = static_cast<const A*>(a.save_mean);
    return dispatch_index(fits_int32(s), [&](auto i) {
      using I = typename decltype(i)::type;
      if (summed && s.layout == Layout::nchw) {
        grad_planes_kernel<T, I><<<dim3(unsigned(s.channels), unsigned(splits)), kThreads, 0, stream>>>(
            dy, x, mean, I(s.channels), I(s.spatial), I(s.count()), I(splits), ws);
      } else if (summed) {
        const dim3 grid(unsigned((s.channels + kWarp - 1) / kWarp), unsigned(splits));
        grad_rows_kernel<T, I><<<grid, dim3(kWarp, kRowsPerBlock), 0, stream>>>(dy, x, mean, I(s.channels),
                                                                              I(s.count()), I(splits), ws);
      }
      finalize_backward_kernel<T, P><<<grid_blocks(s.channels, kThreads), kThreads, 0, stream>>>(a, splits, summed, ws);
      if (a.grad_input != nullptr && s.numel() > 0) {
        dispatch_layout(s.layout, [&](auto l) {
          grad_input_kernel<T, I, decltype(l)::value><<<grid_blocks(s.numel(), kThreads), kThreads, 0, stream>>>(
              dy, x, static_cast<T*>(a.grad_input), I(s.channels), I(s.spatial), I(s.numel()), ws);
          return cudaSuccess;
        });
      }
      return cudaGetLastError();
    });
  });
}

}  // namespace fastdl::cuda
