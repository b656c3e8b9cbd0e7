#pragma once
// CUDA kernels of 2-D convolution: the forward, grad_input and grad_weight passes as one
// implicit-GEMM tile kernel, plus small kernels for grad_bias, split sums and weight reordering.
//
// Compiled as three units that build in parallel, each including this file for its element types
// (FASTDL_CONV_UNIT, kInThisUnit): conv2d_kernels.cu (float, and the entry points of conv2d_kernels.h),
// conv2d_kernels_f64.cu (double) and conv2d_kernels_16bit.cu (float16, bfloat16).
//
// The passes as GEMMs are in conv2d_gemms.cuh, the tile kernel in conv2d_tile.cuh; here the small
// kernels, how a call is planned, and how it runs (launched, or emulated on the host).

#include "cuda/conv2d_kernels.h"

#include <memory>
#include <type_traits>
#include <vector>

#include "common/overrides.h"
#include "cuda/conv2d_tile.cuh"
#include "cuda/device_utils.cuh"

namespace fastdl::cuda {
namespace {

// ---- sums over splits, grad_bias, weight reordering ------------------------------------------------

// out[e] = sum over splits s, in order, of part[s * count + (kTapMajor ? order(e) : e)].
template <typename T, typename I, bool kTapMajor>
__global__ void __launch_bounds__(kThreads)
    sum_splits_kernel(const Acc<T>* __restrict__ part, T* __restrict__ out, I count, I splits, TapMajor<I> order) {
  for (I e = global_thread<I>(); e < count; e += grid_threads<I>()) {
    const I src = kTapMajor ? order(e) : e;
    Acc<T> sum = 0;
    for (I s = 0; s < splits; ++s) sum += part[s * count + src];
    write(out, e, sum);
  }
}

// A split GEMM's outputs: element e of every part's rows x cols (SplitDepth::sum).
template <typename S>
__global__ void __launch_bounds__(kThreads)
    sum_split_gemm_kernel(const S split, typename S::I count, bool rows_fastest) {
  using I = typename S::I;
  for (I e = global_thread<I>(); e < count; e += grid_threads<I>()) split.sum(e, rows_fastest);
}

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
    reorder_weight_kernel(const T* __restrict__ w, T* __restrict__ reordered, I count, TapMajor<I> order) {
  for (I e = global_thread<I>(); e < count; e += grid_threads<I>()) reordered[order(e)] = w[e];
}

// grad_bias partials, N,C,H,W: a block per (channel, split) sums its part of the channel's
// N*OH*OW values, threads along the planes.
template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
    bias_planes_kernel(const T* __restrict__ dy, Acc<T>* __restrict__ part, I channels, Divisor<I> by_plane,
                       I count, I splits) {
  using A = Acc<T>;
  __shared__ A warps[kThreads / kWarp];
  const I k = I(blockIdx.x) % channels, split = I(blockIdx.x) / channels;
  const IndexRange<I> r = split_range(count, splits, split);
  A sum = 0;
  for (I j = r.begin + I(threadIdx.x); j < r.end; j += kThreads) {
    const I n = by_plane.div(j);
    sum += read(dy, (n * channels + k) * by_plane.d + (j - n * by_plane.d));
  }
  for (int offset = kWarp / 2; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if (threadIdx.x % kWarp == 0) warps[threadIdx.x / kWarp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / kWarp; ++w) sum += warps[w];
    part[split * channels + k] = sum;
  }
}

// grad_bias partials, N,H,W,C: a block of kWarp channels x 8 rows per (channel group, split),
// threads along the channels.
template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
    bias_rows_kernel(const T* __restrict__ dy, Acc<T>* __restrict__ part, I channels, I rows, I splits) {
  using A = Acc<T>;
  constexpr int kRows = kThreads / kWarp;
  __shared__ A sums[kRows][kWarp];
  const I chunks = (channels + kWarp - 1) / kWarp;
  const I c = (I(blockIdx.x) % chunks) * kWarp + I(threadIdx.x), split = I(blockIdx.x) / chunks;
  const IndexRange<I> r = split_range(rows, splits, split);
  A sum = 0;
  if (c < channels) {
    for (I row = r.begin + I(threadIdx.y); row < r.end; row += kRows) sum += read(dy, row * channels + c);
  }
  sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    for (int y = 1; y < kRows; ++y) sum += sums[y][threadIdx.x];
    part[split * channels + c] = sum;
  }
}

// ---- planning --------------------------------------------------------------------------------------

// What a call needs besides its outputs, as byte offsets into the workspace: the reordered weight
// (N,H,W,C forward and grad_input), the partial GEMMs of a split forward or grad_input, and the
// per-split partials of grad_weight and grad_bias.
struct Plan {
  int64_t gemm_splits = 1, weight_chunk = 0, weight_splits = 0, bias_splits = 0;
  std::size_t reordered = 0, gemm_part = 0, weight_part = 0, bias_part = 0, bytes = 0;
  bool narrow = true;  // int32 indices
};

// Which of the tile kernel's GEMMs besides grad_weight a call runs.
enum class Pass { none, forward, grad_input };

// Splits of a forward or grad_input GEMM's reduction (SplitDepth): only when its tiles fill less
// than one wave of blocks; then enough for about two waves, none shorter than kMinDepth steps.
template <typename A>
int64_t depth_splits(int64_t rows, int64_t cols, int64_t depth, int64_t groups, int sms) {
  using Cfg = TileConfig<A, int32_t>;
  constexpr int64_t kMinDepth = 128, kMaxSplits = 64;
  const int64_t tiles = ((rows + Cfg::BM - 1) / Cfg::BM) * ((cols + Cfg::BN - 1) / Cfg::BN) * groups;
  if (tiles >= int64_t(sms) * Cfg::kMinBlocks || !override_or("FASTDL_CONV_SPLIT", true)) return 1;
  const int64_t wanted = (2 * int64_t(sms) * Cfg::kMinBlocks + tiles - 1) / tiles;
  return max_of<int64_t>(1, min_of<int64_t>(min_of(wanted, depth / kMinDepth), kMaxSplits));
}

template <typename A>
int64_t grad_weight_chunk(const Conv2dShape& s, int sms) {
  using Cfg = TileConfig<A, int32_t>;  // BK, which the index type changes, plays no part
  // Enough splits for two waves of blocks, none shorter than kMinPixels reduction steps.
  constexpr int64_t kMinPixels = 256;
  const int64_t pixels = s.batch * s.out_h * s.out_w;
  const int64_t tiles = ((s.in_per_group() * s.taps() + Cfg::BM - 1) / Cfg::BM) *
                        ((s.out_per_group() + Cfg::BN - 1) / Cfg::BN) * s.groups;
  const int64_t wanted = (2 * int64_t(sms) * Cfg::kMinBlocks + tiles - 1) / tiles;
  const int64_t splits = max_of<int64_t>(1, min_of<int64_t>(wanted, pixels / kMinPixels));
  return (pixels + splits - 1) / splits;
}

// As batch norm: about 4 blocks per multiprocessor, none summing fewer than ~1024 values.
int64_t grad_bias_splits(const Conv2dShape& s, int sms) {
  const int64_t values = s.batch * s.out_h * s.out_w;
  const bool planes = s.layout == Layout::nchw;
  const int64_t blocks = planes ? s.out_channels : (s.out_channels + kWarp - 1) / kWarp;
  const int64_t wanted = (4 * int64_t(sms) + blocks - 1) / blocks;
  const int64_t useful = planes ? values / 1024 : values / 32;
  return max_of<int64_t>(1, min_of<int64_t>(min_of<int64_t>(wanted, useful), 1024));
}

Plan plan(const Conv2dShape& s, DType dtype, Execution execution, bool reorder, Pass pass, bool grad_weight,
          bool grad_bias) {
  // The multiprocessors the splits spread over: the current device's, or the emulated one's.
  const int sms = execution == Execution::device ? sm_count() : kEmulatedMultiprocessors;
  const std::size_t element = dtype == DType::f64 ? 8 : dtype == DType::f32 ? 4 : 2;
  const std::size_t acc = dtype == DType::f64 ? 8 : 4;
  const auto aligned = [](std::size_t bytes) { return (bytes + 255) / 256 * 256; };
  Plan p;
  // Element offsets, and the window positions oh*sh - ph + r*dh (which huge strides, paddings or
  // dilations can push past the tensors' sizes).
  int64_t largest = max_of(max_of(s.input_numel(), s.output_numel()), s.weight_numel());
  largest = max_of(largest, s.stride_h * s.out_h + s.dilation_h * s.kernel_h + s.pad_h + s.in_h);
  largest = max_of(largest, s.stride_w * s.out_w + s.dilation_w * s.kernel_w + s.pad_w + s.in_w);
  // The tiles form an operand's offset before checking its bounds (a_offset): up to a kernel's reach
  // of rows and columns past the end of the input or grad_output.
  const int64_t reach_h = s.pad_h + s.dilation_h * s.kernel_h + s.stride_h;
  const int64_t reach_w = s.pad_w + s.dilation_w * s.kernel_w + s.stride_w;
  largest = max_of(largest, max_of(s.input_numel(), s.output_numel()) +
                                (reach_h * max_of(s.in_w, s.out_w) + reach_w) * max_of(s.in_channels, s.out_channels));
  if (reorder) p.bytes += aligned(element * std::size_t(s.weight_numel()));
  // Split reductions only where every index fits int32 (a problem that needs 64-bit indices has tiles
  // enough; run_gemm compiles no split for them).
  if (pass != Pass::none && fits_int32(largest) && execution != Execution::host_int64) {
    const bool forward = pass == Pass::forward;
    const int64_t rows = forward ? s.batch * s.out_h * s.out_w : s.batch * s.in_h * s.in_w;
    const int64_t cols = forward ? s.out_per_group() : s.in_per_group();
    const int64_t depth = (forward ? s.in_per_group() : s.out_per_group()) * s.taps();
    p.gemm_splits = dtype == DType::f64 ? depth_splits<double>(rows, cols, depth, s.groups, sms)
                                        : depth_splits<float>(rows, cols, depth, s.groups, sms);
    if (p.gemm_splits > 1) {
      const int64_t values = p.gemm_splits * s.groups * rows * cols;
      p.gemm_part = p.bytes;
      p.bytes += aligned(acc * std::size_t(values));
      largest = max_of(largest, values);
    }
  }
  if (grad_weight) {
    p.weight_chunk = dtype == DType::f64 ? grad_weight_chunk<double>(s, sms) : grad_weight_chunk<float>(s, sms);
    p.weight_splits = (s.batch * s.out_h * s.out_w + p.weight_chunk - 1) / p.weight_chunk;
    p.weight_part = p.bytes;
    p.bytes += aligned(acc * std::size_t(p.weight_splits * s.weight_numel()));
    largest = max_of(largest, p.weight_splits * s.weight_numel());
  }
  if (grad_bias) {
    p.bias_splits = grad_bias_splits(s, sms);
    p.bias_part = p.bytes;
    p.bytes += aligned(acc * std::size_t(p.bias_splits * s.out_channels));
    largest = max_of(largest, p.bias_splits * s.out_channels);
  }
  p.narrow = fits_int32(largest) && execution != Execution::host_int64;
  return p;
}

Plan plan(const Conv2dForwardArgs& a) {
  return plan(a.shape, a.dtype, a.execution, a.shape.layout == Layout::nhwc, Pass::forward, false, false);
}

Plan plan(const Conv2dBackwardArgs& a) {
  const bool grad_input = a.grad_input != nullptr;
  return plan(a.shape, a.dtype, a.execution, grad_input && a.shape.layout == Layout::nhwc,
              grad_input ? Pass::grad_input : Pass::none, a.grad_weight != nullptr, a.grad_bias != nullptr);
}

template <typename I>
TapMajor<I> tap_major(const Conv2dShape& s) {
  return {Divisor<I>(s.in_per_group() * s.taps()), Divisor<I>(s.taps()), I(s.in_per_group())};
}

// ---- running a call: launched on a stream, or emulated on the host -------------------------------

// Launches the kernels on `stream`.
struct Launcher {
  cudaStream_t stream;

  template <typename P>
  void gemm(const P& p) const {
    launch_gemm(p, stream);
  }
  template <typename S>
  void sum_split_gemm(const S& split, bool rows_fastest) const {
    const typename S::I count = split.p.parts() * split.p.rows() * split.p.cols();
    sum_split_gemm_kernel<S><<<grid_blocks(count, kThreads), kThreads, 0, stream>>>(split, count, rows_fastest);
  }
  template <typename T, typename I>
  void reorder_weight(const T* w, T* reordered, I count, TapMajor<I> order) const {
    reorder_weight_kernel<T, I><<<grid_blocks(count, kThreads), kThreads, 0, stream>>>(w, reordered, count, order);
  }
  template <typename T, typename I, bool kTapMajor>
  void sum_splits(const Acc<T>* part, T* out, I count, I splits, TapMajor<I> order) const {
    sum_splits_kernel<T, I, kTapMajor><<<grid_blocks(count, kThreads), kThreads, 0, stream>>>(part, out, count,
                                                                                                splits, order);
  }
  // grad_bias partials: part[split][k] for splits of the N*OH*OW values of every channel.
  template <typename T, typename I, Layout L>
  void bias_partials(const T* dy, Acc<T>* part, const Dims<I>& d, I splits) const {
    const I values = d.N * d.by_ohw.d;
    if constexpr (L == Layout::nchw) {
      bias_planes_kernel<T, I><<<unsigned(int64_t(d.K) * splits), kThreads, 0, stream>>>(dy, part, d.K, d.by_ohw,
                                                                                          values, splits);
    } else {
      const int64_t chunks = (int64_t(d.K) + kWarp - 1) / kWarp;
      bias_rows_kernel<T, I><<<unsigned(chunks * splits), dim3(kWarp, kThreads / kWarp), 0, stream>>>(
          dy, part, d.K, values, splits);
    }
  }
  cudaError_t status() const { return cudaGetLastError(); }
};

// Runs the same plan on host memory, for tests on machines without a GPU: the tile kernel's tiles one
// after another, each tile's threads one after another through each phase between two barriers (so
// shared-memory races are not detected, but every index, bound and buffer swap is exercised), and the
// small kernels as plain loops in their summation order. float and double only.
struct Emulator {
  bool tensor_cores = false;  // the tensor-core tile's logic (on float data) where the slices allow it

  template <typename P>
  void gemm(const P& p) const {
    using Cfg = TileConfig<Acc<typename P::T>, typename P::I>;
    if constexpr (Cfg::BK == 16 && std::is_same_v<typename P::T, float>) {
      if (tensor_cores) return run_tiles<Cfg, MmaThread<Cfg, P, float>>(p);
    }
    run_tiles<Cfg, GemmThread<Cfg, P>>(p);
  }
  template <typename Cfg, typename Thread, typename P>
  void run_tiles(const P& p) const {
    using I = typename P::I;
    const int64_t m_tiles = (int64_t(p.rows()) + Cfg::BM - 1) / Cfg::BM;
    const int64_t n_tiles = (int64_t(p.cols()) + Cfg::BN - 1) / Cfg::BN;
    const auto staged = std::make_unique<typename Thread::StagedSlices>();
    std::vector<Thread> threads(kThreads);
    for (int t = 0; t < kThreads; ++t) threads[t].t = t;
    for (int64_t index = 0; index < m_tiles * n_tiles * int64_t(p.parts()); ++index) {
      const Tile<I> tile = tile_at<Cfg>(p, index, m_tiles, n_tiles);
      for (auto& thread : threads) thread.begin(p, tile);
      multiply_slices<Cfg::BK>(p, tile, tile.depth.begin, tile.depth.end, *staged, [&](auto&& phase) {
        for (auto& thread : threads) phase(thread);
      });
      for (auto& thread : threads) thread.finish(p, tile);
    }
  }
  template <typename S>
  void sum_split_gemm(const S& split, bool rows_fastest) const {
    const typename S::I count = split.p.parts() * split.p.rows() * split.p.cols();
    for (typename S::I e = 0; e < count; ++e) split.sum(e, rows_fastest);
  }
  template <typename T, typename I>
  void reorder_weight(const T* w, T* reordered, I count, TapMajor<I> order) const {
    for (I e = 0; e < count; ++e) reordered[order(e)] = w[e];
  }
  template <typename T, typename I, bool kTapMajor>
  void sum_splits(const Acc<T>* part, T* out, I count, I splits, TapMajor<I> order) const {
    for (I e = 0; e < count; ++e) {
      const I src = kTapMajor ? order(e) : e;
      Acc<T> sum = 0;
      for (I s = 0; s < splits; ++s) sum += part[s * count + src];
      out[e] = T(sum);
    }
  }
  template <typename T, typename I, Layout L>
  void bias_partials(const T* dy, Acc<T>* part, const Dims<I>& d, I splits) const {
    const I values = d.N * d.by_ohw.d;
    for (I s = 0; s < splits; ++s) {
      const IndexRange<I> r = split_range(values, splits, s);
      for (I k = 0; k < d.K; ++k) {
        Acc<T> sum = 0;
        for (I j = r.begin; j < r.end; ++j) {
          const I n = d.by_ohw.div(j);
          sum += L == Layout::nchw ? dy[(n * d.K + k) * d.by_ohw.d + (j - n * d.by_ohw.d)] : dy[j * d.K + k];
        }
        part[s * d.K + k] = sum;
      }
    }
  }
  cudaError_t status() const { return cudaSuccess; }
};

// The compilation units (see the top), and whether this one instantiates the kernels of element type T.
#define FASTDL_CONV_UNIT_F32 0
#define FASTDL_CONV_UNIT_F64 1
#define FASTDL_CONV_UNIT_16BIT 2
template <typename T>
constexpr bool kInThisUnit = FASTDL_CONV_UNIT == FASTDL_CONV_UNIT_16BIT ? kTensorCoreType<T>
                             : FASTDL_CONV_UNIT == FASTDL_CONV_UNIT_F64 ? std::is_same_v<T, double>
                                                                        : std::is_same_v<T, float>;

// Runs body(TypeTag<T>, TypeTag<I>, LayoutTag<L>) for the dtypes of this unit; the emulator takes float
// and double only.
template <typename Exec, typename Body>
cudaError_t dispatch(DType dtype, bool narrow, Layout layout, Body&& body) {
  return dispatch_dtype(dtype, [&](auto t) {
    using T = typename decltype(t)::type;
    if constexpr (!kInThisUnit<T> || (std::is_same_v<Exec, Emulator> && !std::is_floating_point_v<T>)) {
      return cudaErrorNotSupported;
    } else {
      return dispatch_index(narrow, [&](auto i) {
        return dispatch_layout(layout, [&](auto l) { return body(t, i, l); });
      });
    }
  });
}

// Runs the forward or grad_input GEMM p (output in layout L), split over its reduction when the plan
// says so.
template <Layout L, typename Exec, typename P>
void run_gemm(const Exec& exec, const P& p, const Plan& plan, void* workspace) {
  using I = typename P::I;
  if constexpr (std::is_same_v<I, int64_t>) {
    return exec.gemm(p);  // the plan splits 32-bit problems only
  }
  if (plan.gemm_splits <= 1) return exec.gemm(p);
  auto* part = reinterpret_cast<Acc<typename P::T>*>(static_cast<char*>(workspace) + plan.gemm_part);
  const SplitDepth<P> split{p, part, I(plan.gemm_splits)};
  exec.gemm(split);
  exec.sum_split_gemm(split, L == Layout::nchw);  // N,C,H,W: the rows (pixels) are contiguous in the output
}

// The weight as the GEMMs of layout L read it: reordered to (K, R, S, Cg) in the workspace for N,H,W,C.
template <typename T, typename I, Layout L, typename Exec>
const T* gemm_weight(const Exec& exec, const Conv2dShape& s, const void* weight, void* workspace, const Plan& plan) {
  const T* w = static_cast<const T*>(weight);
  if constexpr (L == Layout::nchw) return w;
  T* reordered = reinterpret_cast<T*>(static_cast<char*>(workspace) + plan.reordered);
  exec.template reorder_weight<T, I>(w, reordered, I(s.weight_numel()), tap_major<I>(s));
  return reordered;
}

template <typename Exec>
cudaError_t run_forward(const Conv2dForwardArgs& a, const Exec& exec) {
  const Conv2dShape& s = a.shape;
  if (s.output_numel() == 0) return cudaSuccess;
  const Plan pl = plan(a);
  return dispatch<Exec>(a.dtype, pl.narrow, s.layout, [&](auto t, auto i, auto l) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    constexpr Layout L = decltype(l)::value;
    const T* w = gemm_weight<T, I, L>(exec, s, a.weight, a.workspace, pl);
    run_gemm<L>(exec, ForwardGemm<T, I, L>{dims_of<I>(s), static_cast<const T*>(a.input), w,
                                        static_cast<const T*>(a.bias), static_cast<T*>(a.output)},
             pl, a.workspace);
    return exec.status();
  });
}

template <typename Exec>
cudaError_t run_backward(const Conv2dBackwardArgs& a, const Exec& exec) {
  const Conv2dShape& s = a.shape;
  if (s.output_numel() == 0) return cudaSuccess;
  const Plan pl = plan(a);
  return dispatch<Exec>(a.dtype, pl.narrow, s.layout, [&](auto t, auto i, auto l) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    using A = Acc<T>;
    constexpr Layout L = decltype(l)::value;
    const Dims<I> d = dims_of<I>(s);
    const auto* dy = static_cast<const T*>(a.grad_output);
    const auto* x = static_cast<const T*>(a.input);
    char* ws = static_cast<char*>(a.workspace);
    if (a.grad_input != nullptr) {
      const T* w = gemm_weight<T, I, L>(exec, s, a.weight, a.workspace, pl);
      run_gemm<L>(exec, GradInputGemm<T, I, L>{d, dy, w, static_cast<T*>(a.grad_input)}, pl, a.workspace);
    }
    if (a.grad_weight != nullptr) {
      A* part = reinterpret_cast<A*>(ws + pl.weight_part);
      exec.gemm(GradWeightGemm<T, I, L>{d, x, dy, part, I(pl.weight_chunk)});
      exec.template sum_splits<T, I, L == Layout::nhwc>(part, static_cast<T*>(a.grad_weight), I(s.weight_numel()),
                                                         I(pl.weight_splits), tap_major<I>(s));
    }
    if (a.grad_bias != nullptr) {
      A* part = reinterpret_cast<A*>(ws + pl.bias_part);
      exec.template bias_partials<T, I, L>(dy, part, d, I(pl.bias_splits));
      exec.template sum_splits<T, I, false>(part, static_cast<T*>(a.grad_bias), d.K, I(pl.bias_splits),
                                            tap_major<I>(s));
    }
    return exec.status();
  });
}

// This unit's forward and backward, launched or emulated.
cudaError_t unit_forward(const Conv2dForwardArgs& args, cudaStream_t stream) {
  return args.execution == Execution::device ? run_forward(args, Launcher{stream})
                                             : run_forward(args, Emulator{args.execution == Execution::host_mma});
}

cudaError_t unit_backward(const Conv2dBackwardArgs& args, cudaStream_t stream) {
  return args.execution == Execution::device ? run_backward(args, Launcher{stream})
                                             : run_backward(args, Emulator{args.execution == Execution::host_mma});
}

}  // namespace

// The other units' entry points (conv2d_kernels_f64.cu, conv2d_kernels_16bit.cu).
cudaError_t conv2d_forward_f64(const Conv2dForwardArgs& args, cudaStream_t stream);
cudaError_t conv2d_backward_f64(const Conv2dBackwardArgs& args, cudaStream_t stream);
cudaError_t conv2d_forward_16bit(const Conv2dForwardArgs& args, cudaStream_t stream);
cudaError_t conv2d_backward_16bit(const Conv2dBackwardArgs& args, cudaStream_t stream);

}  // namespace fastdl::cuda
