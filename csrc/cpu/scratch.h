#pragma once
// Scratch memory for the CPU kernels, cached across calls.
//
// A fresh page costs a fault on its first touch: about 2 us per 4 KiB page on these machines, so the
// 4 MiB of packed weights of a ResNet-50 1x1 convolution cost 2 ms, as long as the convolution itself
// at batch 1. glibc hands large freed blocks back to the system, so a buffer allocated per call would
// pay that on every call. Scratch<T> takes the smallest cached block that fits (or allocates one)
// and gives it back to the process-wide cache when it goes out of scope; the cache keeps at most
// kScratchCacheBytes and frees what would exceed that. Safe from any thread.

#include <cstddef>
#include <cstdint>

namespace fastdl {

constexpr int64_t kScratchCacheBytes = int64_t(256) << 20;

namespace scratch_cache {
// A block of at least `bytes` bytes (its size in *size), aligned for any vector type.
std::byte* take(int64_t bytes, int64_t* size);
void give(std::byte* block, int64_t size);
}  // namespace scratch_cache

template <typename T>
class Scratch {
 public:
  Scratch() = default;
  explicit Scratch(int64_t count) { reset(count); }
  Scratch(Scratch&& other) noexcept : block_(other.block_), size_(other.size_) {
    other.block_ = nullptr;
    other.size_ = 0;
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  Scratch& operator=(Scratch&&) = delete;
  ~Scratch() { release(); }

  // Room for `count` elements (the old contents are lost).
  void reset(int64_t count) {
    release();
    block_ = scratch_cache::take(count * int64_t(sizeof(T)), &size_);
  }
  // Room for at least `count` elements, keeping the block when it is large enough.
  T* at_least(int64_t count) {
    if (count * int64_t(sizeof(T)) > size_) reset(count);
    return get();
  }
  T* get() const { return reinterpret_cast<T*>(block_); }
  explicit operator bool() const { return block_ != nullptr; }

 private:
  void release() {
    if (block_) scratch_cache::give(block_, size_);
    block_ = nullptr;
    size_ = 0;
  }
  std::byte* block_ = nullptr;
  int64_t size_ = 0;
};

}  // namespace fastdl
