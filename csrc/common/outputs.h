#pragma once
// Allocation of op outputs. Kernels must write every element of what they return; with
// FASTDL_POISON_OUTPUTS=1 in the environment (the test suite sets it), outputs start as NaN
// (floating) or -1 (integer) instead of whatever memory held, so an unwritten element fails a test.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "common/overrides.h"

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace fastdl {

// A large CPU output is fresh memory (glibc maps every allocation above its mmap threshold anew), and
// the kernel that first writes it pays a page fault and a zeroed page per 4 KB: filling a new 411 MB
// tensor took 112 ms here, 31 ms in 2 MB pages (64 MB: 18.9 -> 8.3 ms; bench/NOTES.md, Batch
// normalization 5). So the 2 MB-aligned interior of a CPU output of at least kHugePageOutputBytes is
// advised to be backed by transparent huge pages (MADV_HUGEPAGE) before anything touches it (so is
// the LSTM/GRU layers' input projection, a workspace as large: common/rnn_layer_ops.h). It
// takes effect where the system's transparent_hugepage mode is madvise or always (else the call
// fails, harmlessly); torch's own allocator does the same for every large tensor under
// THP_MEM_ALLOC_ENABLE=1, off by default. Where huge pages are scarce, a fault in an advised region
// may wait for the kernel to compact memory: FASTDL_HUGE_PAGE_OUTPUTS=never turns the advice off.
constexpr int64_t kHugePageOutputBytes = int64_t{16} << 20;

inline void advise_huge_pages(const at::Tensor& t) {
#ifdef __linux__
  constexpr std::uintptr_t kHugePage = std::uintptr_t{2} << 20;
  if (!t.device().is_cpu() || int64_t(t.nbytes()) < kHugePageOutputBytes) return;
  if (!override_or("FASTDL_HUGE_PAGE_OUTPUTS", true)) return;
  const auto begin = reinterpret_cast<std::uintptr_t>(t.data_ptr()), end = begin + t.nbytes();
  const std::uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1), last = end & ~(kHugePage - 1);
  if (last <= first) return;
  // Memory the allocator hands back from its heap has been touched already: no faults to save, and
  // marking it would let the kernel's khugepaged copy it into huge pages in the background. So only
  // untouched memory (its first page not resident) is advised.
  unsigned char resident = 0;
  if (mincore(reinterpret_cast<void*>(first), 4096, &resident) != 0 || (resident & 1) != 0) return;
  madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

inline bool poison_outputs() {
  static const bool enabled = [] {
    const char* v = std::getenv("FASTDL_POISON_OUTPUTS");
    return v != nullptr && std::strcmp(v, "0") != 0 && v[0] != '\0';
  }();
  return enabled;
}

inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options,
                             at::MemoryFormat memory_format = at::MemoryFormat::Contiguous) {
  at::Tensor t = at::empty(sizes, options.memory_format(memory_format));
  advise_huge_pages(t);
  if (poison_outputs() && t.numel() > 0) {
    if (at::isFloatingType(t.scalar_type())) {
      t.fill_(std::numeric_limits<double>::quiet_NaN());
    } else {
      t.fill_(-1);
    }
  }
  return t;
}

// A backward op's result for a gradient it was not asked for (or did not compute): an empty tensor,
// since an op's schema returns tensors, not None.
inline at::Tensor or_empty(bool wanted, const at::Tensor& t, const at::Tensor& like) {
  return wanted && t.defined() ? t : like.new_empty({0});
}

}  // namespace fastdl
