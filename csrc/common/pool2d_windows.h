#pragma once
// Pooling window arithmetic shared by the CPU and CUDA kernels (no torch headers: nvcc includes it).
//
// A 2-D pooling problem is N*C independent planes; each input plane H x W maps to an output plane
// OH x OW. Along one axis, an output position o reads a window of input positions, and backward
// needs the inverse: the outputs whose window contains an input position i ("covering" outputs).
// Both directions are written once here, per window kind:
//   MaxAxis       max_pool2d: taps o*stride - pad + j*dilation, j in [0, kernel)
//   AvgAxis       avg_pool2d: [o*stride - pad, o*stride - pad + kernel) clipped to the input
//   AdaptiveAxis  adaptive_avg_pool2d: [floor(o*in/out), ceil((o+1)*in/out))
// Each is a template on the index type I; the unsuffixed names are the int64_t versions, and
// narrow<J>() gives a copy in a smaller type once the caller knows the sizes fit.

#include "common/host_device.h"

namespace fastdl {

// PyTorch's pooling output size (aten/native/Pool.h): the number of window starts; in ceil mode a
// last, partial window counts only if it starts inside the input or the left padding.
FASTDL_HOST_DEVICE int64_t pool_output_size(int64_t in, int64_t kernel, int64_t pad, int64_t stride,
                                            int64_t dilation, bool ceil_mode) {
  const int64_t span = in + 2 * pad - dilation * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  int64_t out = floor_div<int64_t>(span, stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

// Sizes of one pooling problem. Planes (N*C) are independent images.
template <typename I>
struct Pool2dShapeT {
  I batch, channels, in_h, in_w, out_h, out_w;
  FASTDL_HOST_DEVICE I planes() const { return batch * channels; }
  FASTDL_HOST_DEVICE I in_plane() const { return in_h * in_w; }
  FASTDL_HOST_DEVICE I out_plane() const { return out_h * out_w; }
  template <typename J>
  FASTDL_HOST_DEVICE Pool2dShapeT<J> narrow() const {
    return {J(batch), J(channels), J(in_h), J(in_w), J(out_h), J(out_w)};
  }
};

template <typename I>
struct MaxAxisT {
  I in, out, kernel, stride, pad, dilation;

  FASTDL_HOST_DEVICE I start(I o) const { return o * stride - pad; }
  // Taps j of output o whose input position start(o) + j*dilation lies inside [0, in).
  FASTDL_HOST_DEVICE IndexRange<I> taps(I o) const {
    const I s = start(o);
    if (dilation == 1) return {s >= 0 ? I(0) : -s, min_of<I>(kernel, in - s)};
    return {s >= 0 ? I(0) : ceil_div<I>(-s, dilation), min_of<I>(kernel, ceil_div<I>(in - s, dilation))};
  }
  // Outputs whose window span [start, start + (kernel-1)*dilation] contains i. With dilation > 1 an
  // output in this range may skip i; callers compare the recorded argmax against i.
  FASTDL_HOST_DEVICE IndexRange<I> covering(I i) const {
    const I extent = (kernel - 1) * dilation + 1;
    const I first = i + pad < extent ? I(0) : (i + pad - extent) / stride + 1;
    return {first, min_of<I>((i + pad) / stride + 1, out)};
  }
  template <typename J>
  FASTDL_HOST_DEVICE MaxAxisT<J> narrow() const {
    return {J(in), J(out), J(kernel), J(stride), J(pad), J(dilation)};
  }
};

template <typename I>
struct AvgAxisT {
  I in, out, kernel, stride, pad;
  bool count_include_pad;

  FASTDL_HOST_DEVICE I start(I o) const { return o * stride - pad; }
  // Input positions averaged by output o.
  FASTDL_HOST_DEVICE IndexRange<I> window(I o) const {
    const I s = start(o);
    return {max_of<I>(s, 0), min_of<I>(s + kernel, in)};
  }
  // This axis's factor of the divisor: with count_include_pad the window clipped to the padded
  // input (a ceil-mode window may hang past the padding), else the positions actually summed.
  FASTDL_HOST_DEVICE I weight(I o) const {
    const I s = start(o);
    return count_include_pad ? min_of<I>(s + kernel, in + pad) - s : window(o).size();
  }
  FASTDL_HOST_DEVICE IndexRange<I> covering(I i) const {
    const I first = i + pad < kernel ? I(0) : (i + pad - kernel) / stride + 1;
    return {first, min_of<I>((i + pad) / stride + 1, out)};
  }
  // Every output averages exactly the input at its own position.
  FASTDL_HOST_DEVICE bool identity() const { return kernel == 1 && stride == 1 && pad == 0; }
  template <typename J>
  FASTDL_HOST_DEVICE AvgAxisT<J> narrow() const {
    return {J(in), J(out), J(kernel), J(stride), J(pad), count_include_pad};
  }
};

template <typename I>
struct AdaptiveAxisT {
  I in, out;

  FASTDL_HOST_DEVICE IndexRange<I> window(I o) const {
    return {(o * in) / out, ceil_div<I>((o + 1) * in, out)};
  }
  FASTDL_HOST_DEVICE I weight(I o) const { return window(o).size(); }
  // Output o covers i iff floor(o*in/out) <= i < ceil((o+1)*in/out), which solves to this range.
  FASTDL_HOST_DEVICE IndexRange<I> covering(I i) const {
    return {(i * out) / in, ceil_div<I>((i + 1) * out, in)};
  }
  FASTDL_HOST_DEVICE bool identity() const { return in == out; }
  template <typename J>
  FASTDL_HOST_DEVICE AdaptiveAxisT<J> narrow() const {
    return {J(in), J(out)};
  }
};

// A 2-D averaging window: one axis policy per dimension and an optional fixed divisor
// (divisor_override; 0 when absent). Every average pooling divisor factors as
// weight_h(oh) * weight_w(ow), which backward uses to scale one output at a time.
template <typename Axis>
struct AvgWindows {
  Axis h, w;
  int64_t divisor_override;

  template <typename I>
  FASTDL_HOST_DEVICE I divisor(I oh, I ow) const {
    return divisor_override != 0 ? I(divisor_override) : h.weight(oh) * w.weight(ow);
  }
  // Pooling that copies its input: one-element windows divided by 1 (adaptive pooling to the
  // input's own size, as AlexNet's and VGG's classifiers do at 224x224 input).
  FASTDL_HOST_DEVICE bool identity() const {
    return h.identity() && w.identity() && (divisor_override == 0 || divisor_override == 1);
  }
  template <typename J>
  FASTDL_HOST_DEVICE auto narrow() const {
    using Narrow = decltype(h.template narrow<J>());
    return AvgWindows<Narrow>{h.template narrow<J>(), w.template narrow<J>(), divisor_override};
  }
};

using Pool2dShape = Pool2dShapeT<int64_t>;
using MaxAxis = MaxAxisT<int64_t>;
using AvgAxis = AvgAxisT<int64_t>;
using AdaptiveAxis = AdaptiveAxisT<int64_t>;

}  // namespace fastdl
