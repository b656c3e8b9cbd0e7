#pragma once
// The LSTM and GRU layer ops (one layer, one direction), written once for every backend: argument
// checks, the time loop and backward through time, with the matrix products on ATen (at::mm: oneDNN
// or MKL on the CPU, cuBLAS on CUDA) unless the backend brings its own, and each step's element-wise
// work on the backend's fused kernels. A backend is a struct with
//
//   static constexpr bool kReducedPrecision;  // whether it takes float16 / bfloat16
//   static constexpr bool kProjections;  // whether it runs LSTMs with projections (weight_hr)
//   static void lstm_forward(const rnn::LstmStepForward&, at::ScalarType);
//   static void lstm_backward(const rnn::LstmStepBackward&, at::ScalarType);
//   static void gru_forward(const rnn::GruStepForward&, at::ScalarType);
//   static void gru_backward(const rnn::GruStepBackward&, at::ScalarType);
//   using Product = ...;  // the recurrent products: RecurrentMm, or the backend's own
//   using LstmForward = ...;  // an LSTM layer's forward steps: LstmProjectFirst<Backend>, or its own
//   using LstmProjectedForward = ...;  // the same with projections (the state h is P wide; the cell
//                                      // kernel's f.h points elsewhere): LstmProjectFirst<Backend>, or its own
//   using GruForward = ...;   // a GRU layer's forward steps: GruProjectFirst<Backend>, or its own
//   using BackwardSteps = ...;  // backward through time: BackwardThenProduct<Backend>, or its own
//   template <typename Fn>  // runs fn(first, last) on blocks of batch rows that together cover
//   static void for_row_blocks(int64_t batch, const Fn& fn);  // [0, batch): SerialRows, or split
//
// A step's rows depend only on the same rows of the step before, so a block of rows can run its
// whole time loop (forward or backward) on its own, with no synchronization between steps.
//
// and registers itself with RnnLayerOps<Backend>::define_kernels(m).
//
// Shapes: input (T, N, I) with batch_sizes empty, or the data of a PackedSequence (sum of
// batch_sizes, I) with batch_sizes (T values, non-increasing): step t then runs the first
// batch_sizes[t] sequences, whose rows are consecutive in the data. h0, c0 (N, H); weight_ih (G H, I),
// weight_hh (G H, H), biases (G H) with G = 4 (LSTM) or 3 (GRU). Outputs keep input's layout. An LSTM
// with projections (torch.nn.LSTM's proj_size P) also takes weight_hr (P, H): its hidden state, h0,
// output and weight_hh's columns are P wide, h = W_hr (o * tanh(c)) (lstm_steps and
// lstm_projected_backward, below).
//
// The state buffers are updated in place on the first batch_sizes[t] rows, so with packed input each
// sequence's final state stays where its last step left it, and in reverse a sequence that starts
// late starts from h0 (its rows were not touched yet). Forward: one product of all steps' inputs,
// then per step the recurrent product and the fused kernel (the CPU LSTM projects each step's input
// with its recurrent product instead, csrc/cpu/rnn.cpp). Backward: per step (in reverse order) the
// fused kernel and the recurrent gradient product, then one product for each weight gradient.

#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/outputs.h"
#include "common/rnn_steps.h"

namespace fastdl {

// Where each step's rows lie in the (rows, I) view of the input.
struct RnnSteps {
  int64_t steps = 0, batch = 0, rows = 0, input_size = 0, hidden = 0;
  int64_t proj = 0;  // an LSTM's projection size, 0 without weight_hr
  bool packed = false;
  std::vector<int64_t> sizes, offsets;

  // The width of the hidden state h (h0, the output, weight_hh's columns): P with projections, else H.
  int64_t state_size() const { return proj > 0 ? proj : hidden; }
};

// The recurrent products of one layer call, out (+)= a @ b with the same b (K, N) at every step:
// constructed once per call (with the largest batch, so a backend may prepare b), then called per
// step. This one calls at::mm (cuBLAS on CUDA).
struct RecurrentMm {
  at::Tensor b;
  RecurrentMm(const at::Tensor& b, int64_t /*batch*/) : b(b) {}
  void operator()(at::Tensor out, const at::Tensor& a, bool accumulate) const {
    if (accumulate) {
      out.addmm_(a, b);
    } else {
      at::mm_out(out, a, b);
    }
  }
};

// One block of every row: the whole batch's time loop at once.
struct SerialRows {
  template <typename Fn>
  static void for_row_blocks(int64_t batch, const Fn& fn) {
    fn(0, batch);
  }
};

namespace rnn_detail {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// The layer's products run in the dtype the op was given. Autocast has done its casting before the op
// (on CUDA, csrc/cuda/autocast.cpp; on the CPU it leaves fastdl's ops alone), but would otherwise still
// reach the at::mm calls inside and hand the fused kernels reduced-precision gates.
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

// b_ih + b_hh, either one, or none.
inline OptTensor summed_bias(const OptTensor& b_ih, const OptTensor& b_hh) {
  if (given(b_ih) && given(b_hh)) return b_ih->add(*b_hh);
  if (given(b_ih) || given(b_hh)) return given(b_ih) ? *b_ih : *b_hh;
  return std::nullopt;
}

inline at::ScalarType cell_type(const Tensor& input) {
  const auto dt = input.scalar_type();
  return dt == at::kHalf || dt == at::kBFloat16 ? at::kFloat : dt;
}

inline void check_like_input(const char* op, const char* name, const Tensor& t, const Tensor& input) {
  TORCH_CHECK(t.defined(), op, ": expected ", name, " to be a tensor, but got None");
  check_same_device(op, name, t, "input", input);
  check_same_dtype(op, name, t, "input", input);
}

// Checks input, batch_sizes, the weights and the biases; hidden size from weight_hh, or with an LSTM's
// w_hr (P, H) from w_hr, weight_hh then (4H, P), where the backend runs projections.
inline RnnSteps check_layer(const char* op, int64_t gates, const Tensor& input, at::IntArrayRef batch_sizes,
                            const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                            bool reduced_precision, const OptTensor& w_hr = std::nullopt, bool projections = false) {
  TORCH_CHECK(input.defined(), op, ": expected input to be a tensor, but got None");
  check_floating(op, "input", input, reduced_precision);
  RnnSteps s;
  s.packed = !batch_sizes.empty();
  if (s.packed) {
    TORCH_CHECK(input.dim() == 2, op, ": expected input of shape (sum(batch_sizes), input_size) with ",
                "batch_sizes given (packed data), but got shape ", input.sizes());
    s.steps = int64_t(batch_sizes.size());
    s.batch = batch_sizes[0];
    int64_t total = 0;
    for (int64_t t = 0; t < s.steps; ++t) {
      TORCH_CHECK(batch_sizes[t] > 0 && batch_sizes[t] <= (t ? batch_sizes[t - 1] : batch_sizes[0]), op,
                  ": expected batch_sizes to be positive and non-increasing, but got ", batch_sizes);
      s.sizes.push_back(batch_sizes[t]);
      s.offsets.push_back(total);
      total += batch_sizes[t];
    }
    TORCH_CHECK(total == input.size(0), op, ": expected input to hold sum(batch_sizes) = ", total,
                " rows, but got shape ", input.sizes());
  } else {
    TORCH_CHECK(input.dim() == 3, op, ": expected input of shape (T, N, input_size), but got shape ",
                input.sizes());
    s.steps = input.size(0);
    s.batch = input.size(1);
    TORCH_CHECK(s.steps > 0, op, ": expected input with at least one time step, but got shape ", input.sizes());
    for (int64_t t = 0; t < s.steps; ++t) {
      s.sizes.push_back(s.batch);
      s.offsets.push_back(t * s.batch);
    }
  }
  s.rows = s.packed ? input.size(0) : s.steps * s.batch;
  s.input_size = input.size(-1);
  check_like_input(op, "weight_hh", w_hh, input);
  if (given(w_hr)) {
    TORCH_CHECK(projections, op, ": this backend has no LSTM with projections (weight_hr)");
    check_like_input(op, "weight_hr", *w_hr, input);
    TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(0) > 0, op, ": expected weight_hr of shape (proj_size, hidden_size) ",
                "with proj_size > 0, but got shape ", w_hr->sizes());
    s.proj = w_hr->size(0);
    s.hidden = w_hr->size(1);
    check_sizes(op, "weight_hh", w_hh, {gates * s.hidden, s.proj});
  } else {
    TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == gates * w_hh.size(1), op, ": expected weight_hh of shape (",
                gates, " * hidden_size, hidden_size), but got shape ", w_hh.sizes());
    s.hidden = w_hh.size(1);
  }
  check_like_input(op, "weight_ih", w_ih, input);
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == gates * s.hidden && w_ih.size(1) == s.input_size, op,
              ": expected weight_ih of shape (", gates * s.hidden, ", ", s.input_size,
              ") for hidden_size ", s.hidden, " and input of shape ", input.sizes(), ", but got shape ", w_ih.sizes());
  for (const auto& [name, b] : {std::pair{"bias_ih", &b_ih}, std::pair{"bias_hh", &b_hh}}) {
    if (!given(*b)) continue;
    check_like_input(op, name, **b, input);
    check_sizes(op, name, **b, {gates * s.hidden});
  }
  return s;
}

// A state of `width` values per sequence (default: the hidden size).
inline void check_state(const char* op, const char* name, const Tensor& t, const Tensor& input, const RnnSteps& s,
                        int64_t width = -1) {
  check_like_input(op, name, t, input);
  check_sizes(op, name, t, {s.batch, width < 0 ? s.hidden : width});
}

// An optional gradient of shape `sizes`: checked, or undefined when absent.
inline Tensor grad_or_none(const char* op, const char* name, const OptTensor& g, const Tensor& input,
                           at::IntArrayRef sizes) {
  if (!given(g)) return Tensor();
  check_like_input(op, name, *g, input);
  check_sizes(op, name, *g, sizes);
  return g->contiguous();
}

// Pointer to row `row` of a dense row-major matrix.
inline void* row_ptr(const Tensor& t, int64_t row) {
  return t.defined() && t.numel() > 0 ? static_cast<char*>(t.data_ptr()) + row * t.stride(0) * t.element_size()
                                      : nullptr;
}

// For every step's rows, the state each sequence had before the step: (rows, H), aligned with
// `states` (each step's new states) and starting from `init` (N, H).
inline Tensor previous_states(const Tensor& states, const Tensor& init, const RnnSteps& s, bool reverse) {
  const int64_t T = s.steps, N = s.batch;
  if (T == 1) return init.narrow(0, 0, s.sizes[0]).contiguous();
  if (!s.packed) {
    return reverse ? at::cat({states.narrow(0, N, (T - 1) * N), init})
                   : at::cat({init, states.narrow(0, 0, (T - 1) * N)});
  }
  std::vector<Tensor> pieces;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t bs = s.sizes[t];
    if (!reverse) {
      pieces.push_back(t == 0 ? init.narrow(0, 0, bs) : states.narrow(0, s.offsets[t - 1], bs));
    } else if (t == T - 1) {
      pieces.push_back(init.narrow(0, 0, bs));
    } else {
      const int64_t later = s.sizes[t + 1];  // <= bs: the sequences still running at t + 1
      pieces.push_back(states.narrow(0, s.offsets[t + 1], later));
      if (bs > later) pieces.push_back(init.narrow(0, later, bs - later));
    }
  }
  return at::cat(pieces);
}

// The states before every step, for backward: for unpacked input no copy (each step's rows are the
// step before's rows of `states`, or `init` for the first), for packed input previous_states.
class PreviousStates {
 public:
  PreviousStates(const Tensor& states, const Tensor& init, const RnnSteps& s, bool reverse)
      : states_(states), init_(init), steps_(s), reverse_(reverse) {
    if (s.packed) all_ = previous_states(states, init, s, reverse);
  }

  // The previous states of the step whose rows start at row `off` of the data and batch row `first`.
  void* rows(int64_t off, int64_t first) const {
    if (steps_.packed) return row_ptr(all_, off);
    const int64_t N = steps_.batch, t = off / N, before = reverse_ ? t + 1 : t - 1;
    return before >= 0 && before < steps_.steps ? row_ptr(states_, before * N + first) : row_ptr(init_, first);
  }

  // sum over steps of d[step rows]^T @ previous[step rows]: the recurrent weight's gradient for d, the
  // gradient of the hidden pre-activations (rows, G*H), as one product or (unpacked) two.
  Tensor weight_grad(const Tensor& d) const {
    if (steps_.packed) return d.t().mm(all_);
    const int64_t N = steps_.batch, later = steps_.rows - N;
    const Tensor first_steps = reverse_ ? d.narrow(0, later, N) : d.narrow(0, 0, N);  // start from init
    const Tensor grad = first_steps.t().mm(init_);
    if (later == 0) return grad;
    const Tensor rest = reverse_ ? d.narrow(0, 0, later) : d.narrow(0, N, later);
    return grad.addmm_(rest.t(), reverse_ ? states_.narrow(0, N, later) : states_.narrow(0, 0, later));
  }

 private:
  Tensor states_, init_, all_;
  const RnnSteps& steps_;
  bool reverse_;
};

// step(first, rows, offset) for every time step of every block of batch rows (Backend::for_row_blocks),
// the last step first when `last_first`: the block's sequences still running at that step are `rows`
// rows from batch row `first`, at row `offset` of the step-major data.
template <typename Backend, typename Step>
void for_each_step(const RnnSteps& s, bool last_first, const Step& step) {
  Backend::for_row_blocks(s.batch, [&](int64_t first, int64_t last) {
    for (int64_t i = 0; i < s.steps; ++i) {
      const int64_t t = last_first ? s.steps - 1 - i : i;
      const int64_t rows = std::min(s.sizes[t], last) - first;
      if (rows > 0) step(first, rows, s.offsets[t] + first);
    }
  });
}

// Every step's input projection at once: x (rows, I) @ w_ih^T (+ bias), dense. At batch 64 and 200
// steps it is tens of MB of fresh memory on every call, which the product faults in page by page; in
// huge pages, as large outputs are (common/outputs.h), GRU inference ran 1.08-1.17x as fast there
// (bench/NOTES.md, LSTM/GRU 14).
inline at::Tensor project(const at::Tensor& x, const at::Tensor& w_ih, const std::optional<at::Tensor>& bias) {
  at::Tensor gi = at::empty({x.size(0), w_ih.size(0)}, x.options());
  advise_huge_pages(gi);
  if (bias) {
    at::addmm_out(gi, *bias, x, w_ih.t());
  } else {
    at::mm_out(gi, x, w_ih.t());
  }
  return gi;
}

}  // namespace rnn_detail

// The forward steps of one LSTM layer call, constructed once and then called per step: one product
// of every step's input (x: (rows, I)) up front, both biases folded in; per step the recurrent
// product added into that step's rows (one read stream less for the gate kernel), then the
// backend's cell kernel. A backend may name its own with the same constructor and call.
template <typename Backend>
struct LstmProjectFirst {
  at::Tensor gi;
  typename Backend::Product recurrent;

  LstmProjectFirst(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                   const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh, const RnnSteps& s)
      : gi(rnn_detail::project(x, w_ih, rnn_detail::summed_bias(b_ih, b_hh))), recurrent(w_hh.t(), s.batch) {}

  // f: this step's kernel arguments, pre still to fill; its rows start at row `off` of x and at batch
  // row `first` of h, the state (batch, H), or (batch, P) with projections, where f.h points elsewhere.
  void operator()(rnn::LstmStepForward f, int64_t off, int64_t first, const at::Tensor& h, at::ScalarType dt) const {
    at::Tensor pre = gi.narrow(0, off, f.rows);
    recurrent(pre, h.narrow(0, first, f.rows), true);
    f.pre = pre.data_ptr();
    Backend::lstm_forward(f, dt);
  }
};

// The forward steps of one GRU layer call, the same way: every step's input projection (with b_ih)
// up front; per step the recurrent product into a (batch, 3H) buffer, then the backend's cell kernel,
// which adds b_hh (the reset gate scales the hidden part alone).
template <typename Backend>
struct GruProjectFirst {
  at::Tensor gi, gh, b_hh;
  typename Backend::Product recurrent;

  GruProjectFirst(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                  const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh, const RnnSteps& s)
      : gi(rnn_detail::project(x, w_ih, b_ih)),
        gh(at::empty({s.batch, w_hh.size(0)}, x.options())),
        b_hh(dense_or_none(b_hh)),
        recurrent(w_hh.t(), s.batch) {}

  // f: this step's kernel arguments, gi, gh and b_hh still to fill; as LstmProjectFirst's.
  void operator()(rnn::GruStepForward f, int64_t off, int64_t first, const at::Tensor& h, at::ScalarType dt) const {
    recurrent(gh.narrow(0, first, f.rows), h.narrow(0, first, f.rows), false);
    f.gi = rnn_detail::row_ptr(gi, off);
    f.gh = rnn_detail::row_ptr(gh, first);
    f.b_hh = b_hh.defined() ? b_hh.data_ptr() : nullptr;
    Backend::gru_forward(f, dt);
  }
};

// The steps of backward through time of one layer call, constructed once (with W_hh) and called per
// step in processing order: the backend's cell backward, then the gradient of the previous state,
// dh = d @ W_hh (LSTM: d = dgates, replacing dh; GRU: d = dgh, added to the direct part the kernel
// left in dh). finish() after the last step (nothing to do here). A backend may name its own.
template <typename Backend>
struct BackwardThenProduct {
  typename Backend::Product recurrent;

  BackwardThenProduct(const at::Tensor& w_hh, const RnnSteps& s) : recurrent(w_hh, s.batch) {}

  // b: the step's kernel arguments, its rows at row `off` of d and at batch row `first` of dh (batch, H).
  template <typename Args>
  void operator()(const Args& b, int64_t off, int64_t first, const at::Tensor& dh, const at::Tensor& d,
                  at::ScalarType dt) const {
    constexpr bool kLstm = std::is_same_v<Args, rnn::LstmStepBackward>;
    if (b.hidden > 0) {
      if constexpr (kLstm) {
        Backend::lstm_backward(b, dt);
      } else {
        Backend::gru_backward(b, dt);
      }
    }
    recurrent(dh.narrow(0, first, b.rows), d.narrow(0, off, b.rows), !kLstm);
  }

  void finish(const at::Tensor& /*dh*/, const at::Tensor& /*d*/, at::ScalarType /*dt*/) const {}
};

template <typename Backend>
struct RnnLayerOps {
  using Tensor = at::Tensor;
  using OptTensor = std::optional<at::Tensor>;

  // -> output, hy, cy, and for backward (empty unless keep_workspace) gates (rows, 4H), cells (rows, H)
  // and, with w_hr, hidden (rows, H): each step's o * tanh(c) before the projection
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer(
      const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
      const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, at::IntArrayRef batch_sizes, bool reverse,
      bool keep_workspace) {
    using namespace rnn_detail;
    const NoAutocast no_autocast;
    constexpr const char* op = "fastdl.lstm";
    const RnnSteps s = check_layer(op, 4, input, batch_sizes, w_ih, w_hh, b_ih, b_hh, Backend::kReducedPrecision,
                                   w_hr, Backend::kProjections);
    check_state(op, "h0", h0, input, s, s.state_size());
    check_state(op, "c0", c0, input, s);
    const c10::DeviceGuard guard(input.device());
    if (s.proj > 0) {
      return lstm_steps<typename Backend::LstmProjectedForward>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, s, reverse,
                                                                keep_workspace);
    }
    return lstm_steps<typename Backend::LstmForward>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, s, reverse,
                                                     keep_workspace);
  }

  // -> grad_input, grad_h0, grad_c0, grad_weight_ih, grad_weight_hh, grad_weight_hr, grad_bias_ih,
  // grad_bias_hh; output_mask: (input, weights, biases); what is not wanted (or w_hr, not given) is empty.
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_backward(
      const OptTensor& grad_output, const OptTensor& grad_hy, const OptTensor& grad_cy, const Tensor& input,
      const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr,
      const Tensor& output, const Tensor& gates, const Tensor& cells, const Tensor& hidden,
      at::IntArrayRef batch_sizes, bool reverse, std::array<bool, 3> mask) {
    using namespace rnn_detail;
    const NoAutocast no_autocast;
    constexpr const char* op = "fastdl.lstm_backward";
    const RnnSteps s = check_layer(op, 4, input, batch_sizes, w_ih, w_hh, {}, {}, Backend::kReducedPrecision, w_hr,
                                   Backend::kProjections);
    const int64_t H = s.hidden, P = s.state_size();
    check_state(op, "h0", h0, input, s, P);
    check_state(op, "c0", c0, input, s);
    const c10::DeviceGuard guard(input.device());
    const auto opts = input.options();
    const at::ScalarType ct = cell_type(input);
    const auto copts = opts.dtype(ct);
    const Tensor out = saved_rows(op, "output", output, input, s, P, input.scalar_type());
    const Tensor g_all = saved_rows(op, "gates", gates, input, s, 4 * H, input.scalar_type());
    const Tensor c_all = saved_rows(op, "cells", cells, input, s, H, ct);
    const Tensor go = grad_or_none(op, "grad_output", grad_output, input, output_shape(input, s, P));
    const Tensor dh = given(grad_hy) ? grad_or_none(op, "grad_hy", grad_hy, input, {s.batch, P}).clone()
                                     : at::zeros({s.batch, P}, opts);
    Tensor dc = given(grad_cy) ? grad_or_none(op, "grad_cy", grad_cy, input, {s.batch, H}).to(ct).clone()
                               : at::zeros({s.batch, H}, copts);
    const PreviousStates c_prev(c_all, c0.to(ct).contiguous(), s, reverse);
    Tensor dgates = new_output({s.rows, 4 * H}, opts);
    const Tensor go_rows = go.defined() ? go.view({s.rows, P}) : go;
    Tensor gw_hr;
    if (s.proj > 0) {
      const Tensor h_all = saved_rows(op, "hidden", hidden, input, s, H, input.scalar_type());
      gw_hr = lstm_projected_backward(s, *w_hr, w_hh, h_all, go_rows, g_all, c_all, c_prev, dh, dc, dgates, reverse,
                                      mask[1]);
    } else {
      const typename Backend::BackwardSteps steps(w_hh, s);
      for_each_step<Backend>(s, !reverse, [&](int64_t first, int64_t bs, int64_t off) {
        const rnn::LstmStepBackward b{bs, H, row_ptr(g_all, off), row_ptr(c_all, off), c_prev.rows(off, first),
                                      row_ptr(go_rows, off), row_ptr(dh, first), row_ptr(dc, first),
                                      row_ptr(dgates, off)};
        steps(b, off, first, dh, dgates, input.scalar_type());
      });
      steps.finish(dh, dgates, input.scalar_type());
    }
    const Tensor x = input.reshape({s.rows, s.input_size});
    Tensor gx, gw_ih, gw_hh, gb;
    if (mask[0]) {
      gx = new_output({s.rows, s.input_size}, opts);
      at::mm_out(gx, dgates, w_ih);
      gx = gx.view(input.sizes());
    }
    if (mask[1]) {
      gw_ih = dgates.t().mm(x);
      gw_hh = PreviousStates(out, h0.contiguous(), s, reverse).weight_grad(dgates);
    }
    if (mask[2]) gb = dgates.sum(0);
    // b_ih and b_hh enter the same sums: equal gradients (two tensors, as outputs must not alias).
    return {or_empty(mask[0], gx, input), dh, dc.to(input.scalar_type()), or_empty(mask[1], gw_ih, input),
            or_empty(mask[1], gw_hh, input), or_empty(mask[1], gw_hr, input), or_empty(mask[2], gb, input),
            or_empty(mask[2], mask[2] ? gb.clone() : gb, input)};
  }

  // -> output, hy, saved (rows, 4H: r, z, n, W_hn h + b_hn; empty unless keep_workspace)
  static std::tuple<Tensor, Tensor, Tensor> gru_layer(const Tensor& input, const Tensor& h0, const Tensor& w_ih,
                                                      const Tensor& w_hh, const OptTensor& b_ih,
                                                      const OptTensor& b_hh, at::IntArrayRef batch_sizes,
                                                      bool reverse, bool keep_workspace) {
    using namespace rnn_detail;
    const NoAutocast no_autocast;
    constexpr const char* op = "fastdl.gru";
    const RnnSteps s = check_layer(op, 3, input, batch_sizes, w_ih, w_hh, b_ih, b_hh, Backend::kReducedPrecision);
    check_state(op, "h0", h0, input, s);
    const c10::DeviceGuard guard(input.device());
    const int64_t H = s.hidden;
    const auto opts = input.options();
    const typename Backend::GruForward step(input.reshape({s.rows, s.input_size}), w_ih, w_hh, b_ih, b_hh, s);
    Tensor out = new_output({s.rows, H}, opts);
    Tensor h = h0.contiguous().clone();
    Tensor saved = keep_workspace ? new_output({s.rows, 4 * H}, opts) : at::empty({0}, opts);
    for_each_step<Backend>(s, reverse, [&](int64_t first, int64_t bs, int64_t off) {
      const rnn::GruStepForward f{bs,      H, nullptr, nullptr, nullptr, row_ptr(h, first), row_ptr(out, off),
                                  keep_workspace ? row_ptr(saved, off) : nullptr};
      if (H > 0) step(f, off, first, h, input.scalar_type());
    });
    return {out.view(output_shape(input, s)), h, saved};
  }

  // -> grad_input, grad_h0, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_layer_backward(
      const OptTensor& grad_output, const OptTensor& grad_hy, const Tensor& input, const Tensor& h0,
      const Tensor& w_ih, const Tensor& w_hh, const Tensor& output, const Tensor& saved,
      at::IntArrayRef batch_sizes, bool reverse, std::array<bool, 3> mask) {
    using namespace rnn_detail;
    const NoAutocast no_autocast;
    constexpr const char* op = "fastdl.gru_backward";
    const RnnSteps s = check_layer(op, 3, input, batch_sizes, w_ih, w_hh, {}, {}, Backend::kReducedPrecision);
    check_state(op, "h0", h0, input, s);
    const c10::DeviceGuard guard(input.device());
    const int64_t H = s.hidden;
    const auto opts = input.options();
    const Tensor out = saved_rows(op, "output", output, input, s, H, input.scalar_type());
    const Tensor ws = saved_rows(op, "saved", saved, input, s, 4 * H, input.scalar_type());
    const Tensor go = grad_or_none(op, "grad_output", grad_output, input, output_shape(input, s, H));
    Tensor dh = given(grad_hy) ? grad_or_none(op, "grad_hy", grad_hy, input, {s.batch, H}).clone()
                               : at::zeros({s.batch, H}, opts);
    const PreviousStates h_prev(out, h0.contiguous(), s, reverse);
    const typename Backend::BackwardSteps steps(w_hh, s);
    // dgh: the gradient of W_hh h + b_hh; dxn: of the n part of W_ih x + b_ih, whose r and z parts are
    // dgh's (one (rows, 2H) buffer less than the whole gradient of W_ih x + b_ih).
    Tensor dgh = new_output({s.rows, 3 * H}, opts), dxn = new_output({s.rows, H}, opts);
    const Tensor go_rows = go.defined() ? go.view({s.rows, H}) : go;
    for_each_step<Backend>(s, !reverse, [&](int64_t first, int64_t bs, int64_t off) {
      const rnn::GruStepBackward b{bs, H, row_ptr(ws, off), h_prev.rows(off, first), row_ptr(go_rows, off),
                                   row_ptr(dh, first), row_ptr(dxn, off), row_ptr(dgh, off)};
      steps(b, off, first, dh, dgh, input.scalar_type());
    });
    steps.finish(dh, dgh, input.scalar_type());
    const Tensor x = input.reshape({s.rows, s.input_size});
    Tensor gx, gw_ih, gw_hh, gb_ih, gb_hh;
    const Tensor drz = dgh.narrow(1, 0, 2 * H);  // the r and z parts of both gradients
    if (mask[0]) {
      gx = new_output({s.rows, s.input_size}, opts);
      at::mm_out(gx, dxn, w_ih.narrow(0, 2 * H, H)).addmm_(drz, w_ih.narrow(0, 0, 2 * H));
      gx = gx.view(input.sizes());
    }
    if (mask[1]) {
      gw_ih = at::cat({drz.t().mm(x), dxn.t().mm(x)});
      gw_hh = h_prev.weight_grad(dgh);
    }
    if (mask[2]) {
      gb_ih = at::cat({drz.sum(0), dxn.sum(0)});
      gb_hh = dgh.sum(0);
    }
    return {or_empty(mask[0], gx, input), dh, or_empty(mask[1], gw_ih, input), or_empty(mask[1], gw_hh, input),
            or_empty(mask[2], gb_ih, input), or_empty(mask[2], gb_hh, input)};
  }

  static void define_kernels(torch::Library& m) {
    m.impl("lstm_layer", &lstm_layer);
    m.impl("lstm_layer_backward", &lstm_layer_backward);
    m.impl("gru_layer", &gru_layer);
    m.impl("gru_layer_backward", &gru_layer_backward);
  }

 private:
  // An LSTM layer's forward steps: per step `Step` (the backend's LstmForward, or its
  // LstmProjectedForward with w_hr: CUDA's small-batch kernel assumes an H-wide state) runs the
  // recurrent product and the cell kernel; with projections the kernel writes o * tanh(c) to `hidden`
  // and the state is then h = hidden @ W_hr^T, copied to the output.
  template <typename Step>
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_steps(
      const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
      const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, const RnnSteps& s, bool reverse,
      bool keep_workspace) {
    using namespace rnn_detail;
    const int64_t H = s.hidden;
    const bool projected = s.proj > 0;
    const auto opts = input.options();
    const at::ScalarType ct = cell_type(input);
    const auto copts = opts.dtype(ct);
    const Step step(input.reshape({s.rows, s.input_size}), w_ih, w_hh, b_ih, b_hh, s);
    std::optional<typename Backend::Product> projection;
    if (projected) projection.emplace(w_hr->t(), s.batch);
    Tensor out = new_output({s.rows, s.state_size()}, opts);
    Tensor h = h0.contiguous().clone();
    Tensor c = c0.to(ct).contiguous().clone();
    Tensor gates = keep_workspace ? new_output({s.rows, 4 * H}, opts) : at::empty({0}, opts);
    Tensor cells = keep_workspace ? new_output({s.rows, H}, copts) : at::empty({0}, copts);
    // o * tanh(c) with projections: every step's rows for backward, else the current step's (by batch row)
    Tensor hidden = projected ? new_output({keep_workspace ? s.rows : s.batch, H}, opts) : at::empty({0}, opts);
    for_each_step<Backend>(s, reverse, [&](int64_t first, int64_t bs, int64_t off) {
      const int64_t at_row = keep_workspace ? off : first;
      void* h_out = projected ? row_ptr(hidden, at_row) : row_ptr(h, first);
      void* out_rows = projected ? h_out : row_ptr(out, off);
      const rnn::LstmStepForward f{bs, H, nullptr, row_ptr(c, first), h_out, out_rows,
                                   keep_workspace ? row_ptr(gates, off) : nullptr,
                                   keep_workspace ? row_ptr(cells, off) : nullptr};
      if (H > 0) step(f, off, first, h, input.scalar_type());
      if (!projected) return;
      const Tensor state = h.narrow(0, first, bs);
      (*projection)(state, hidden.narrow(0, at_row, bs), false);
      out.narrow(0, off, bs).copy_(state);
    });
    if (projected && !keep_workspace) hidden = at::empty({0}, opts);
    return {out.view(output_shape(input, s, s.state_size())), h, c.to(input.scalar_type()), gates, cells, hidden};
  }

  // An LSTM with projections, backward through time, per step in processing order: dp = this step's
  // output gradient plus the later steps' dh (P wide, kept in dp for W_hr's gradient), its gradient for
  // o * tanh(c), dp @ W_hr, into the cell's backward kernel, then dh = dgates @ W_hh
  // (BackwardThenProduct). Fills dh, dc and dgates; returns W_hr's gradient (when `weights`): sum over
  // steps of dp^T @ hidden.
  static Tensor lstm_projected_backward(const RnnSteps& s, const Tensor& w_hr, const Tensor& w_hh, const Tensor& h_all,
                                        const Tensor& go_rows, const Tensor& g_all, const Tensor& c_all,
                                        const rnn_detail::PreviousStates& c_prev, const Tensor& dh, const Tensor& dc,
                                        const Tensor& dgates, bool reverse, bool weights) {
    using namespace rnn_detail;
    const int64_t H = s.hidden;
    const at::ScalarType dt = h_all.scalar_type();
    const BackwardThenProduct<Backend> steps(w_hh, s);
    const typename Backend::Product projection(w_hr, s.batch);
    Tensor dp = new_output({s.rows, s.proj}, h_all.options()), dhidden = new_output({s.batch, H}, h_all.options());
    for_each_step<Backend>(s, !reverse, [&](int64_t first, int64_t bs, int64_t off) {
      Tensor dp_rows = dp.narrow(0, off, bs);
      const Tensor later = dh.narrow(0, first, bs);
      if (go_rows.defined()) {
        at::add_out(dp_rows, later, go_rows.narrow(0, off, bs));
      } else {
        dp_rows.copy_(later);
      }
      projection(dhidden.narrow(0, first, bs), dp_rows, false);
      const rnn::LstmStepBackward b{bs, H, row_ptr(g_all, off), row_ptr(c_all, off), c_prev.rows(off, first),
                                    nullptr, row_ptr(dhidden, first), row_ptr(dc, first), row_ptr(dgates, off)};
      steps(b, off, first, dh, dgates, dt);
    });
    steps.finish(dh, dgates, dt);
    return weights ? dp.t().mm(h_all) : Tensor();
  }

  static std::vector<int64_t> output_shape(const Tensor& input, const RnnSteps& s, int64_t width = -1) {
    const int64_t w = width < 0 ? s.hidden : width;
    return s.packed ? std::vector<int64_t>{s.rows, w} : std::vector<int64_t>{s.steps, s.batch, w};
  }

  // A tensor the forward saved: `width` values per row, dense.
  static Tensor saved_rows(const char* op, const char* name, const Tensor& t, const Tensor& input, const RnnSteps& s,
                           int64_t width, at::ScalarType dtype) {
    TORCH_CHECK(t.defined() && t.numel() == s.rows * width, op, ": expected ", name, " to hold ", s.rows,
                " rows of ", width, " values as the forward op saved them (keep_workspace=True), but got shape ",
                t.defined() ? t.sizes() : at::IntArrayRef{});
    check_same_device(op, name, t, "input", input);
    TORCH_CHECK(t.scalar_type() == dtype, op, ": expected ", name, " to be ", dtype_name(dtype), ", but got ",
                dtype_name(t.scalar_type()));
    return t.reshape({s.rows, width}).contiguous();
  }
};

}  // namespace fastdl
