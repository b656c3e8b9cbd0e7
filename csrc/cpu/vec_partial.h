#pragma once
// Loads and stores of the first n lanes of a vector, reading or writing nothing past them: masked
// loads/stores on AVX2 and AVX-512 (one instruction), a copy through memory otherwise.

#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <type_traits>

namespace fastdl {

template <typename T>
using Vec = at::vec::Vectorized<T>;

#if defined(CPU_CAPABILITY_AVX2)
// Lanes l < n of an AVX2 mask for T.
template <typename T>
__m256i first_lanes(int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  } else {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
}
#endif

// p[0, n) in the first lanes, zeros after; 0 <= n <= Vec<T>::size().
template <typename T>
Vec<T> load_partial(const T* p, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), p);
  } else {
    return _mm512_maskz_loadu_pd(__mmask8((1u << n) - 1), p);
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    return _mm256_maskload_ps(p, first_lanes<T>(n));
  } else {
    return _mm256_maskload_pd(p, first_lanes<T>(n));
  }
#else
  return n > 0 ? Vec<T>::loadu(p, n) : Vec<T>(T(0));
#endif
}

// Writes the first n lanes of v to p[0, n).
template <typename T>
void store_partial(T* p, const Vec<T>& v, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    _mm512_mask_storeu_ps(p, __mmask16((1u << n) - 1), v);
  } else {
    _mm512_mask_storeu_pd(p, __mmask8((1u << n) - 1), v);
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    _mm256_maskstore_ps(p, first_lanes<T>(n), v);
  } else {
    _mm256_maskstore_pd(p, first_lanes<T>(n), v);
  }
#else
  if (n > 0) v.store(p, n);
#endif
}

}  // namespace fastdl
