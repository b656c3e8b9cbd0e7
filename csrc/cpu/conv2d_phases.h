#pragma once
// The phases of a strided convolution's input gradient (csrc/cpu/conv2d.cpp and
// conv2d_channels_last.h): the input pixels a grad_output pixel reaches through each kernel tap, split
// by their positions modulo the stride so that within a phase every tap is a constant offset.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/conv2d_shape.h"
#include "common/host_device.h"
#include "cpu/work_split.h"

namespace fastdl::conv2d_cpu {

// The kernel taps that reach input phase `a` along one axis, and their grad_output offsets:
// input i = a + stride*m gets grad_output m + (a + pad - tap*dilation) / stride from tap `tap`.
struct PhaseTaps {
  std::vector<int64_t> taps, offsets;
  int64_t min_offset = 0, max_offset = 0;
};

inline PhaseTaps phase_taps(int64_t a, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  PhaseTaps p;
  for (int64_t t = 0; t < kernel; ++t) {
    const int64_t d = a + pad - t * dilation;
    if (((d % stride) + stride) % stride != 0) continue;
    const int64_t off = floor_div(d, stride);
    p.min_offset = p.taps.empty() ? off : std::min(p.min_offset, off);
    p.max_offset = p.taps.empty() ? off : std::max(p.max_offset, off);
    p.taps.push_back(t);
    p.offsets.push_back(off);
  }
  return p;
}

// The phases of a strided input gradient: phase (a, a_w) is grad_input's pixels (a + stride*i,
// a_w + stride*j), and the kernel taps that reach them (PhaseTaps per axis). Taps whose grad_output
// rows or columns all lie in the padding add nothing and are left out.
struct Phase {
  int64_t a, a_w, rows_out, cols_out, width;  // width: the grad_output columns the phase's rows read
  PhaseTaps th, tw;
  std::vector<int64_t> tap_index;  // kernel taps r * S + s reaching the phase; empty: none
  std::vector<int64_t> rows, cols;  // per tap: its grad_output row and column offsets
};

inline std::vector<Phase> strided_phases(const Conv2dShape& s) {
  const auto reaches = [](int64_t offset, int64_t count, int64_t size) { return offset < size && offset + count > 0; };
  std::vector<Phase> phases;
  for (int64_t a = 0; a < std::min(s.stride_h, s.in_h); ++a) {
    for (int64_t a_w = 0; a_w < std::min(s.stride_w, s.in_w); ++a_w) {
      Phase ph{a, a_w, div_up(s.in_h - a, s.stride_h), div_up(s.in_w - a_w, s.stride_w), 0,
               phase_taps(a, s.kernel_h, s.stride_h, s.pad_h, s.dilation_h),
               phase_taps(a_w, s.kernel_w, s.stride_w, s.pad_w, s.dilation_w), {}, {}, {}};
      ph.width = ph.cols_out + ph.tw.max_offset - ph.tw.min_offset;
      for (size_t r = 0; r < ph.th.taps.size(); ++r) {
        for (size_t c = 0; c < ph.tw.taps.size(); ++c) {
          if (!reaches(ph.th.offsets[r], ph.rows_out, s.out_h) || !reaches(ph.tw.offsets[c], ph.cols_out, s.out_w)) {
            continue;
          }
          ph.tap_index.push_back(ph.th.taps[r] * s.kernel_w + ph.tw.taps[c]);
          ph.rows.push_back(ph.th.offsets[r]);
          ph.cols.push_back(ph.tw.offsets[c]);
        }
      }
      phases.push_back(std::move(ph));
    }
  }
  return phases;
}

// The tap subsets of the phases that have taps, in phase order (pack_phase_weights).
inline std::vector<std::vector<int64_t>> phase_subsets(const std::vector<Phase>& phases) {
  std::vector<std::vector<int64_t>> subsets;
  for (const Phase& ph : phases) {
    if (!ph.tap_index.empty()) subsets.push_back(ph.tap_index);
  }
  return subsets;
}

}  // namespace fastdl::conv2d_cpu
