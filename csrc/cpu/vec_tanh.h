#pragma once
// tanh on at::vec float vectors, within 1.4 ulp (at::vec's tanh, Sleef's, is within 1 ulp) at a
// fraction of its cost: Sleef's tanhf was 8% of a two-thread LSTM inference profile (batch 64, hidden
// 256), more than eight times its expf with a third as many calls. Two branches, both computed, one
// kept per lane:
//
//   |x| <  kTanhSplit: the odd polynomial |x| + |x|^3 q(x^2), q of degree 4 fitted by least squares on
//                      Chebyshev nodes to (tanh(x) / x - 1) / x^2 (relative error 1.8e-8 in exact
//                      arithmetic; 0.92 ulp in a numpy float32 evaluation without FMA);
//   |x| >= kTanhSplit: 1 - 2 / (exp(2|x|) + 1), where tanh >= 0.55 so the subtraction loses
//                      at most one bit (1.7 ulp in the same evaluation); exp overflows to inf for large |x| and the
//                      result is then exactly 1; NaN stays NaN;
//   then x's sign (so tanh(-0) = -0).
//
// tests/cpp/test_vec_tanh.cpp checks it against double-precision tanh. Other types: at::vec's tanh.

#include <ATen/cpu/vec/vec.h>

#include <type_traits>

namespace fastdl {

constexpr float kTanhSplit = 0.625f;

template <typename T>
at::vec::Vectorized<T> vec_tanh(const at::vec::Vectorized<T>& x) {
  using V = at::vec::Vectorized<T>;
  if constexpr (!std::is_same_v<T, float>) {
    return x.tanh();
  } else {
    const V a = x.abs();
    const V y = x * x;
    V q(-0.0061552319675683975f);
    q = at::vec::fmadd(q, y, V(0.021045716479420662f));
    q = at::vec::fmadd(q, y, V(-0.053863927721977234f));
    q = at::vec::fmadd(q, y, V(0.13332891464233398f));
    q = at::vec::fmadd(q, y, V(-0.3333333134651184f));
    const V small = at::vec::fmadd(a * y, q, a);
    const V e = (a + a).exp();
    const V large = V(1.0f) - V(2.0f) / (e + V(1.0f));
    return V::blendv(large, small, a < V(kTanhSplit)).copysign(x);  // -0 stays -0
  }
}

}  // namespace fastdl
