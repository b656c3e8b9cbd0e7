// The process-wide cache behind Scratch<T> (scratch.h).

#include "cpu/scratch.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>

#include "common/outputs.h"

namespace fastdl {
namespace scratch_cache {
namespace {

constexpr std::size_t kAlignment = 64;

struct Cache {
  std::mutex mutex;
  std::multimap<int64_t, std::byte*> blocks;  // by size
  int64_t bytes = 0;
};

Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: kernels may run during static destruction
  return *c;
}

// Under FASTDL_POISON_OUTPUTS (the tests) every block is handed out filled with all-ones bytes, a NaN
// in float32 and float64, so that a kernel reading scratch it did not write in this call (what an
// earlier call left there may well be right) fails a test, as outputs do (common/outputs.h).
std::byte* poisoned(std::byte* block, int64_t size) {
  if (poison_outputs()) std::memset(block, 0xff, std::size_t(size));
  return block;
}

}  // namespace

std::byte* take(int64_t bytes, int64_t* size) {
  bytes = std::max<int64_t>(bytes, 1);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    const auto it = c.blocks.lower_bound(bytes);
    // A cached block at most twice as large as needed; a larger one stays for larger requests.
    if (it != c.blocks.end() && it->first <= 2 * bytes) {
      *size = it->first;
      std::byte* block = it->second;
      c.bytes -= it->first;
      c.blocks.erase(it);
      return poisoned(block, *size);
    }
  }
  const int64_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  void* p = std::aligned_alloc(kAlignment, std::size_t(rounded));
  if (p == nullptr) throw std::bad_alloc();
  *size = rounded;
  return poisoned(static_cast<std::byte*>(p), rounded);
}

void give(std::byte* block, int64_t size) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.blocks.emplace(size, block);
  c.bytes += size;
  // Over the limit: free the smallest blocks first (the large ones are the costly ones to fault in).
  while (c.bytes > kScratchCacheBytes && !c.blocks.empty()) {
    const auto it = c.blocks.begin();
    c.bytes -= it->first;
    std::free(it->second);
    c.blocks.erase(it);
  }
}

}  // namespace scratch_cache
}  // namespace fastdl
