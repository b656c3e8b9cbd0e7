// CUDA kernels of 2-D max, average and adaptive average pooling, forward and backward.
//
// One thread per output element (forward) or input element (backward) in a grid-stride loop, with
// consecutive threads on consecutive elements of the tensor's layout (along W for N,C,H,W, along C
// for N,H,W,C), so that stores and most loads coalesce. Large averaging windows over N,C,H,W (global
// average pooling) use a warp per output instead, reading the window with consecutive lanes.
// Backward gathers each input's gradient from the outputs covering it instead of scattering with
// atomics: deterministic, every element written once, no zero-fill pass. Arithmetic runs in float
// (double for double); index arithmetic in int32 whenever the sizes allow.

#include "cuda/device_utils.cuh"
#include "cuda/pool2d_kernels.h"

namespace fastdl::cuda {
namespace {

constexpr int kThreads = 256;

// Element e of a dense (N, C, h, w) tensor in layout L: its spatial position (y, x), the offset of
// the same (n, c) at spatial position 0 in a tensor of spatial size `other_plane`, and the distance
// between spatial neighbours there.
template <typename I>
struct Located {
  I y, x, base, step;
};

template <Layout L, typename I>
__device__ __forceinline__ Located<I> locate(I e, I channels, I h, I w, I other_plane) {
  if constexpr (L == Layout::nchw) {
    const I rows = e / w;
    return {rows % h, e % w, (rows / h) * other_plane, I(1)};
  } else {
    const I pixels = e / channels, rows = pixels / w;
    return {rows % h, pixels % w, (rows / h) * other_plane * channels + e % channels, channels};
  }
}

template <typename T, typename I, Layout L, bool kIndices>
__global__ void __launch_bounds__(kThreads)
    max_pool2d_forward_kernel(const T* __restrict__ in, T* __restrict__ out,
                              int64_t* __restrict__ indices, Pool2dShapeT<I> s, MaxAxisT<I> ah,
                              MaxAxisT<I> aw, I total) {
  for (I e = global_thread<I>(); e < total; e += grid_threads<I>()) {
    const Located<I> at = locate<L>(e, s.channels, s.out_h, s.out_w, s.in_plane());
    const IndexRange<I> th = ah.taps(at.y), tw = aw.taps(at.x);
    const I ih0 = ah.start(at.y), iw0 = aw.start(at.x);
    // PyTorch's rule: taps in row-major order, the first maximum wins, a NaN wins, the last NaN wins.
    Acc<T> best = -std::numeric_limits<Acc<T>>::infinity();
    I best_pos = (ih0 + th.begin * ah.dilation) * s.in_w + iw0 + tw.begin * aw.dilation;
    for (I j = th.begin; j < th.end; ++j) {
      const I row = (ih0 + j * ah.dilation) * s.in_w + iw0;
      for (I k = tw.begin; k < tw.end; ++k) {
        const I pos = row + k * aw.dilation;
        const Acc<T> v = to_acc(in[at.base + pos * at.step]);
        if (v > best || isnan(v)) {
          best = v;
          best_pos = pos;
        }
      }
    }
    out[e] = from_acc<T>(best);
    if constexpr (kIndices) indices[e] = best_pos;
  }
}

template <typename T, typename I, Layout L>
__global__ void __launch_bounds__(kThreads)
    max_pool2d_backward_kernel(const T* __restrict__ grad_out, const int64_t* __restrict__ indices,
                               T* __restrict__ grad_in, Pool2dShapeT<I> s, MaxAxisT<I> ah,
                               MaxAxisT<I> aw, I total) {
  for (I e = global_thread<I>(); e < total; e += grid_threads<I>()) {
    const Located<I> at = locate<L>(e, s.channels, s.in_h, s.in_w, s.out_plane());
    const int64_t pos = at.y * s.in_w + at.x;
    const IndexRange<I> rh = ah.covering(at.y), rw = aw.covering(at.x);
    Acc<T> g = 0;
    // An output contributes if its recorded argmax is this element and this element is one of its
    // taps: a dilated window lying wholly in the padding records an index outside itself (as
    // torch does), which may equal this element's position, yet depends on no input.
    for (I oh = rh.begin; oh < rh.end; ++oh) {
      if (ah.dilation != 1 && (at.y - ah.start(oh)) % ah.dilation != 0) continue;
      for (I ow = rw.begin; ow < rw.end; ++ow) {
        if (aw.dilation != 1 && (at.x - aw.start(ow)) % aw.dilation != 0) continue;
        const I o = at.base + (oh * s.out_w + ow) * at.step;
        if (indices[o] == pos) g += to_acc(grad_out[o]);
      }
    }
    grad_in[e] = from_acc<T>(g);
  }
}

template <typename T, typename I, Layout L, typename Axis>
__global__ void __launch_bounds__(kThreads)
    avg_pool2d_forward_kernel(const T* __restrict__ in, T* __restrict__ out, Pool2dShapeT<I> s,
                              AvgWindows<Axis> win, I total) {
  for (I e = global_thread<I>(); e < total; e += grid_threads<I>()) {
    const Located<I> at = locate<L>(e, s.channels, s.out_h, s.out_w, s.in_plane());
    const IndexRange<I> rh = win.h.window(at.y), rw = win.w.window(at.x);
    Acc<T> sum = 0;
    for (I ih = rh.begin; ih < rh.end; ++ih) {
      for (I iw = rw.begin; iw < rw.end; ++iw) sum += to_acc(in[at.base + (ih * s.in_w + iw) * at.step]);
    }
    out[e] = from_acc<T>(sum / Acc<T>(win.divisor(at.y, at.x)));
  }
}

// N,C,H,W with large windows: one warp per output, lanes striding through the window.
template <typename T, typename I, typename Axis>
__global__ void __launch_bounds__(kThreads)
    avg_pool2d_forward_warp_kernel(const T* __restrict__ in, T* __restrict__ out, Pool2dShapeT<I> s,
                                   AvgWindows<Axis> win, I total) {
  const I lane = threadIdx.x % kWarp;
  for (I e = global_thread<I>() / kWarp; e < total; e += grid_threads<I>() / kWarp) {
    const I x = e % s.out_w, rows = e / s.out_w, y = rows % s.out_h;
    const IndexRange<I> rh = win.h.window(y), rw = win.w.window(x);
    const I width = rw.size(), area = rh.size() * width;
    const T* window = in + (rows / s.out_h) * s.in_plane() + rh.begin * s.in_w + rw.begin;
    Acc<T> sum = 0;
    if (width == s.in_w) {  // whole rows: the window is one contiguous run
      for (I t = lane; t < area; t += kWarp) sum += to_acc(window[t]);
    } else {
      for (I t = lane; t < area; t += kWarp) sum += to_acc(window[(t / width) * s.in_w + t % width]);
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
    if (lane == 0) out[e] = from_acc<T>(sum / Acc<T>(win.divisor(y, x)));
  }
}

template <typename T, typename I, Layout L, typename Axis>
__global__ void __launch_bounds__(kThreads)
    avg_pool2d_backward_kernel(const T* __restrict__ grad_out, T* __restrict__ grad_in,
                               Pool2dShapeT<I> s, AvgWindows<Axis> win, I total) {
  for (I e = global_thread<I>(); e < total; e += grid_threads<I>()) {
    const Located<I> at = locate<L>(e, s.channels, s.in_h, s.in_w, s.out_plane());
    const IndexRange<I> rh = win.h.covering(at.y), rw = win.w.covering(at.x);
    Acc<T> g = 0;
    for (I oh = rh.begin; oh < rh.end; ++oh) {
      for (I ow = rw.begin; ow < rw.end; ++ow) {
        g += to_acc(grad_out[at.base + (oh * s.out_w + ow) * at.step]) / Acc<T>(win.divisor(oh, ow));
      }
    }
    grad_in[e] = from_acc<T>(g);
  }
}

// Average pooling with one window over the whole plane (global pooling: ResNet's and GoogLeNet's
// pooling to 1x1): each input element's gradient is its plane's output gradient over the divisor, the
// same value avg_pool2d_backward_kernel computes, without its window search (which made ResNet-50's
// 2048x7x7 at batch 128 run at 0.47x torch on the first H100 run; this one is not yet measured).
template <typename T, typename I, Layout L>
__global__ void __launch_bounds__(kThreads)
    avg_pool2d_backward_global_kernel(const T* __restrict__ grad_out, T* __restrict__ grad_in, I plane,
                                      I channels, Acc<T> divisor, I total) {
  for (I e = global_thread<I>(); e < total; e += grid_threads<I>()) {
    const I p = L == Layout::nchw ? e / plane : (e / (plane * channels)) * channels + e % channels;
    grad_in[e] = from_acc<T>(to_acc(grad_out[p]) / divisor);
  }
}

// Whether every index a kernel forms for this problem fits int32: element offsets in both tensors
// and the products o*in, i*out of adaptive windows.
bool fits_int32(const Pool2dShape& s) {
  const int64_t largest = max_of<int64_t>(max_of<int64_t>(s.planes() * s.in_plane(), s.planes() * s.out_plane()),
                                          max_of<int64_t>(s.in_h * s.out_h, s.in_w * s.out_w));
  return cuda::fits_int32(largest);
}

// Runs body(TypeTag<T>, TypeTag<I>, LayoutTag<L>) for the element type, index type and layout.
template <typename Body>
cudaError_t dispatch(DType dtype, Layout layout, const Pool2dShape& shape, Body&& body) {
  return dispatch_dtype(dtype, [&](auto t) {
    return dispatch_index(fits_int32(shape), [&](auto i) {
      return dispatch_layout(layout, [&](auto l) { return body(t, i, l); });
    });
  });
}

template <typename Axis>
cudaError_t avg_forward(DType dtype, Layout layout, const void* input, void* output,
                        const Pool2dShape& shape, const AvgWindows<Axis>& windows,
                        cudaStream_t stream) {
  const int64_t total = shape.planes() * shape.out_plane();
  const bool per_warp = layout == Layout::nchw && total > 0 &&
                        windows.h.window(0).size() * windows.w.window(0).size() >= kWarp;
  return dispatch(dtype, layout, shape, [&](auto t, auto i, auto l) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    const auto s = shape.narrow<I>();
    const auto win = windows.template narrow<I>();
    const auto* src = static_cast<const T*>(input);
    auto* dst = static_cast<T*>(output);
    if (per_warp) {
      avg_pool2d_forward_warp_kernel<T, I><<<grid_blocks(total * kWarp, kThreads), kThreads, 0, stream>>>(
          src, dst, s, win, I(total));
    } else {
      avg_pool2d_forward_kernel<T, I, decltype(l)::value><<<grid_blocks(total, kThreads), kThreads, 0, stream>>>(
          src, dst, s, win, I(total));
    }
    return cudaGetLastError();
  });
}

template <typename Axis>
cudaError_t avg_backward(DType dtype, Layout layout, const void* grad_output, void* grad_input,
                         const Pool2dShape& shape, const AvgWindows<Axis>& windows,
                         cudaStream_t stream) {
  const int64_t total = shape.planes() * shape.in_plane();
  // Window 0 is asked for only when it exists: an adaptive window of an empty output divides by 0.
  const auto covers_plane = [&] {
    const IndexRange<int64_t> wh = windows.h.window(int64_t(0)), ww = windows.w.window(int64_t(0));
    return wh.begin == 0 && wh.end == shape.in_h && ww.begin == 0 && ww.end == shape.in_w;
  };
  const bool global = shape.out_h == 1 && shape.out_w == 1 && covers_plane();
  return dispatch(dtype, layout, shape, [&](auto t, auto i, auto l) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    constexpr Layout L = decltype(l)::value;
    const auto* src = static_cast<const T*>(grad_output);
    auto* dst = static_cast<T*>(grad_input);
    if (global) {
      avg_pool2d_backward_global_kernel<T, I, L><<<grid_blocks(total, kThreads), kThreads, 0, stream>>>(
          src, dst, I(shape.in_plane()), I(shape.channels), Acc<T>(windows.divisor(int64_t(0), int64_t(0))),
          I(total));
    } else {
      avg_pool2d_backward_kernel<T, I, L><<<grid_blocks(total, kThreads), kThreads, 0, stream>>>(
          src, dst, shape.narrow<I>(), windows.template narrow<I>(), I(total));
    }
    return cudaGetLastError();
  });
}

}  // namespace

cudaError_t max_pool2d_forward(DType dtype, Layout layout, const void* input, void* output,
                               int64_t* indices, const Pool2dShape& shape, const MaxAxis& h,
                               const MaxAxis& w, cudaStream_t stream) {
  const int64_t total = shape.planes() * shape.out_plane();
  return dispatch(dtype, layout, shape, [&](auto t, auto i, auto l) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    constexpr Layout L = decltype(l)::value;
    const auto* src = static_cast<const T*>(input);
    auto* dst = static_cast<T*>(output);
    const unsigned blocks = grid_blocks(total, kThreads);
    if (indices != nullptr) {
      max_pool2d_forward_kernel<T, I, L, true><<<blocks, kThreads, 0, stream>>>(
          src, dst, indices, shape.narrow<I>(), h.narrow<I>(), w.narrow<I>(), I(total));
    } else {
      max_pool2d_forward_kernel<T, I, L, false><<<blocks, kThreads, 0, stream>>>(
          src, dst, nullptr, shape.narrow<I>(), h.narrow<I>(), w.narrow<I>(), I(total));
    }
    return cudaGetLastError();
  });
}

cudaError_t max_pool2d_backward(DType dtype, Layout layout, const void* grad_output,
                                const int64_t* indices, void* grad_input, const Pool2dShape& shape,
                                const MaxAxis& h, const MaxAxis& w, cudaStream_t stream) {
  const int64_t total = shape.planes() * shape.in_plane();
  return dispatch(dtype, layout, shape, [&](auto t, auto i, auto l) {
    using T = typename decltype(t)::type;
    using I = typename decltype(i)::type;
    max_pool2d_backward_kernel<T, I, decltype(l)::value><<<grid_blocks(total, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(grad_output), indices, static_cast<T*>(grad_input), shape.narrow<I>(),
        h.narrow<I>(), w.narrow<I>(), I(total));
    return cudaGetLastError();
  });
}

cudaError_t avg_pool2d_forward(DType dtype, Layout layout, const void* input, void* output,
                               const Pool2dShape& shape, const AvgWindows<AvgAxis>& windows,
                               cudaStream_t stream) {
  return avg_forward(dtype, layout, input, output, shape, windows, stream);
}

cudaError_t avg_pool2d_forward(DType dtype, Layout layout, const void* input, void* output,
                               const Pool2dShape& shape, const AvgWindows<AdaptiveAxis>& windows,
                               cudaStream_t stream) {
  return avg_forward(dtype, layout, input, output, shape, windows, stream);
}

cudaError_t avg_pool2d_backward(DType dtype, Layout layout, const void* grad_output,
                                void* grad_input, const Pool2dShape& shape,
                                const AvgWindows<AvgAxis>& windows, cudaStream_t stream) {
  return avg_backward(dtype, layout, grad_output, grad_input, shape, windows, stream);
}

cudaError_t avg_pool2d_backward(DType dtype, Layout layout, const void* grad_output,
                                void* grad_input, const Pool2dShape& shape,
                                const AvgWindows<AdaptiveAxis>& windows, cudaStream_t stream) {
  return avg_backward(dtype, layout, grad_output, grad_input, shape, windows, stream);
}

}  // namespace fastdl::cuda
