#pragma once
// The element-wise math of one LSTM or GRU cell, forward and backward, written once for the CPU
// kernels (on at::vec vectors) and the CUDA kernels (on float or double scalars), so the two cannot
// drift apart. `V` is the value type; `Act` supplies sigmoid and tanh for it (ScalarAct below for
// plain scalars; the CPU kernels define one for vectors). The matrix products around these
// (input projection, recurrent product, weight gradients) are not here.
//
// Gate order and formulas are PyTorch's (torch.nn.LSTM / torch.nn.GRU):
//   LSTM  i,f,g,o:  i = s(a_i), f = s(a_f), g = tanh(a_g), o = s(a_o)
//                   c' = f c + i g,  h' = o tanh(c')
//   GRU   r,z,n:    r = s(x_r + h_r), z = s(x_z + h_z), n = tanh(x_n + r h_n)
//                   h' = (1 - z) n + z h  (= n + z (h - n))
// where a = W_ih x + b_ih + W_hh h + b_hh, x_* = W_ih x + b_ih and h_* = W_hh h + b_hh: the GRU's
// reset gate multiplies the hidden product after the matrix product, as PyTorch and cuDNN do.
// Derivatives use the activations' outputs: s' = s (1 - s), tanh' = 1 - tanh^2.

#include <cmath>

#include "common/host_device.h"

namespace fastdl::rnn {

// Device code calls CUDA's overloads of exp and tanh for float and double (expf, tanhf for float).
template <typename T>
struct ScalarAct {
  static FASTDL_HOST_DEVICE T sigmoid(T x) { return T(1) / (T(1) + exp_of(-x)); }
  static FASTDL_HOST_DEVICE T tanh(T x) {
#if defined(__CUDA_ARCH__)
    return ::tanh(x);
#else
    return std::tanh(x);
#endif
  }

 private:
  static FASTDL_HOST_DEVICE T exp_of(T x) {
#if defined(__CUDA_ARCH__)
    return ::exp(x);
#else
    return std::exp(x);
#endif
  }
};

template <typename V>
FASTDL_HOST_DEVICE V sigmoid_grad(V s) { return s * (V(1) - s); }

template <typename V>
FASTDL_HOST_DEVICE V tanh_grad(V t) { return V(1) - t * t; }

// ---- LSTM ------------------------------------------------------------------------------------------

template <typename V>
struct LstmGates {
  V i, f, g, o;  // activated
};

template <typename V>
struct LstmForward {
  LstmGates<V> gates;
  V c, h;
};

// a_*: the gates' pre-activations (both products and both biases); c_prev: the previous cell state.
template <typename Act, typename V>
FASTDL_HOST_DEVICE LstmForward<V> lstm_forward(V a_i, V a_f, V a_g, V a_o, V c_prev) {
  LstmForward<V> r;
  r.gates = {Act::sigmoid(a_i), Act::sigmoid(a_f), Act::tanh(a_g), Act::sigmoid(a_o)};
  r.c = r.gates.f * c_prev + r.gates.i * r.gates.g;
  r.h = r.gates.o * Act::tanh(r.c);
  return r;
}

template <typename V>
struct LstmBackward {
  LstmGates<V> d;  // gradients of the pre-activations (of both matrix products)
  V dc_prev;
};

// dh, dc: gradients of this step's h' and c' (from the output, the next step and the final state).
template <typename Act, typename V>
FASTDL_HOST_DEVICE LstmBackward<V> lstm_backward(const LstmGates<V>& g, V c, V c_prev, V dh, V dc) {
  const V tc = Act::tanh(c);
  const V dc_total = dc + dh * g.o * tanh_grad(tc);
  LstmBackward<V> r;
  r.d.i = dc_total * g.g * sigmoid_grad(g.i);
  r.d.f = dc_total * c_prev * sigmoid_grad(g.f);
  r.d.g = dc_total * g.i * tanh_grad(g.g);
  r.d.o = dh * tc * sigmoid_grad(g.o);
  r.dc_prev = dc_total * g.f;
  return r;
}

// ---- GRU -------------------------------------------------------------------------------------------

// What the GRU's backward needs of a step: the gates and h_n = W_hn h + b_hn.
template <typename V>
struct GruGates {
  V r, z, n, hn;
};

template <typename V>
struct GruForward {
  GruGates<V> gates;
  V h;
};

// x_*: input projection with b_ih; h_*: hidden product with b_hh; h_prev: the previous state.
template <typename Act, typename V>
FASTDL_HOST_DEVICE GruForward<V> gru_forward(V x_r, V x_z, V x_n, V h_r, V h_z, V h_n, V h_prev) {
  GruForward<V> out;
  const V r = Act::sigmoid(x_r + h_r);
  const V z = Act::sigmoid(x_z + h_z);
  const V n = Act::tanh(x_n + r * h_n);
  out.gates = {r, z, n, h_n};
  out.h = n + z * (h_prev - n);
  return out;
}

template <typename V>
struct GruBackward {
  V dx_r, dx_z, dx_n;  // gradients of the input projection's pre-activations (and of b_ih)
  V dh_n;              // of the hidden product's n part (the r and z parts equal dx_r, dx_z)
  V dh_prev;           // the direct part; the recurrent product adds the rest
};

template <typename V>
FASTDL_HOST_DEVICE GruBackward<V> gru_backward(const GruGates<V>& g, V h_prev, V dh) {
  GruBackward<V> out;
  out.dx_n = dh * (V(1) - g.z) * tanh_grad(g.n);
  out.dx_z = dh * (h_prev - g.n) * sigmoid_grad(g.z);
  out.dx_r = out.dx_n * g.hn * sigmoid_grad(g.r);
  out.dh_n = out.dx_n * g.r;
  out.dh_prev = dh * g.z;
  return out;
}

}  // namespace fastdl::rnn
