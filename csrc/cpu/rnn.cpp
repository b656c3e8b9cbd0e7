// CPU kernels of the LSTM and GRU time steps (float32, float64): the fused element-wise forward and
// backward of one step (common/rnn_gates.h) on at::vec vectors along the hidden units, parallel over
// the batch rows. The time loop and the matrix products are common/rnn_layer_ops.h's.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "common/rnn_gates.h"
#include "common/rnn_layer_ops.h"
#include "cpu/rnn_gemm.h"
#include "cpu/vec_tanh.h"

namespace fastdl {
namespace {

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
struct VecAct {
  static Vec<T> sigmoid(Vec<T> x) { return Vec<T>(T(1)) / (Vec<T>(T(1)) + x.neg().exp()); }
  static Vec<T> tanh(Vec<T> x) { return vec_tanh(x); }
};

// n <= Vec<T>::size() values at p; the lanes past n read as zero and are never stored.
template <typename T>
Vec<T> load(const T* p, int64_t n) {
  return n == Vec<T>::size() ? Vec<T>::loadu(p) : Vec<T>::loadu(p, n);
}

template <typename T>
void store(const Vec<T>& v, T* p, int64_t n) {
  if (n == Vec<T>::size()) {
    v.store(p);
  } else {
    v.store(p, n);
  }
}

// Calls body(row, j, n) for every row and every run of n <= Vec<T>::size() hidden units from j.
// Work is split over threads in pieces of kUnitsPerItem units of a row, so that a small batch
// (8 rows) still uses every thread once a step has enough elements to pay for the fork.
constexpr int64_t kUnitsPerItem = 64;

template <typename T, typename Body>
void for_each_vector(int64_t rows, int64_t hidden, const Body& body) {
  const int64_t per_row = (hidden + kUnitsPerItem - 1) / kUnitsPerItem;
  const int64_t grain = std::max<int64_t>(1, 1024 / kUnitsPerItem);
  at::parallel_for(0, rows * per_row, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = item / per_row, first = (item % per_row) * kUnitsPerItem;
      const int64_t last = std::min(hidden, first + kUnitsPerItem);
      for (int64_t j = first; j < last; j += Vec<T>::size()) body(r, j, std::min<int64_t>(Vec<T>::size(), last - j));
    }
  });
}

template <typename T>
const T* typed(const void* p) { return static_cast<const T*>(p); }
template <typename T>
T* typed(void* p) { return static_cast<T*>(p); }

template <typename T>
void lstm_forward(const rnn::LstmStepForward& f) {
  const int64_t H = f.hidden;
  for_each_vector<T>(f.rows, H, [&](int64_t r, int64_t j, int64_t n) {
    const T* pre = typed<T>(f.pre) + r * 4 * H + j;
    const auto a = [&](int k) { return load(pre + k * H, n); };
    T* c = typed<T>(f.c) + r * H + j;
    const auto s = rnn::lstm_forward<VecAct<T>>(a(0), a(1), a(2), a(3), load(c, n));
    store(s.c, c, n);
    store(s.h, typed<T>(f.h) + r * H + j, n);
    store(s.h, typed<T>(f.out) + r * H + j, n);
    if (f.gates != nullptr) {
      T* g = typed<T>(f.gates) + r * 4 * H + j;
      store(s.gates.i, g, n);
      store(s.gates.f, g + H, n);
      store(s.gates.g, g + 2 * H, n);
      store(s.gates.o, g + 3 * H, n);
    }
    if (f.cells != nullptr) store(s.c, typed<T>(f.cells) + r * H + j, n);
  });
}

template <typename T>
void lstm_backward(const rnn::LstmStepBackward& b) {
  const int64_t H = b.hidden;
  for_each_vector<T>(b.rows, H, [&](int64_t r, int64_t j, int64_t n) {
    const T* g = typed<T>(b.gates) + r * 4 * H + j;
    const rnn::LstmGates<Vec<T>> gates{load(g, n), load(g + H, n), load(g + 2 * H, n), load(g + 3 * H, n)};
    Vec<T> dh = load(typed<T>(b.dh) + r * H + j, n);
    if (b.grad_out != nullptr) dh = dh + load(typed<T>(b.grad_out) + r * H + j, n);
    T* dc = typed<T>(b.dc) + r * H + j;
    const auto d = rnn::lstm_backward<VecAct<T>>(gates, load(typed<T>(b.cells) + r * H + j, n),
                                                 load(typed<T>(b.c_prev) + r * H + j, n), dh, load(dc, n));
    T* dg = typed<T>(b.dgates) + r * 4 * H + j;
    store(d.d.i, dg, n);
    store(d.d.f, dg + H, n);
    store(d.d.g, dg + 2 * H, n);
    store(d.d.o, dg + 3 * H, n);
    store(d.dc_prev, dc, n);
  });
}

template <typename T>
void gru_forward(const rnn::GruStepForward& f) {
  const int64_t H = f.hidden;
  for_each_vector<T>(f.rows, H, [&](int64_t r, int64_t j, int64_t n) {
    const T* gi = typed<T>(f.gi) + r * 3 * H + j;
    const T* gh = typed<T>(f.gh) + r * 3 * H + j;
    const T* bias = f.b_hh != nullptr ? typed<T>(f.b_hh) + j : nullptr;
    const auto hidden = [&](int k) {
      return bias != nullptr ? load(gh + k * H, n) + load(bias + k * H, n) : load(gh + k * H, n);
    };
    T* h = typed<T>(f.h) + r * H + j;
    const auto s = rnn::gru_forward<VecAct<T>>(load(gi, n), load(gi + H, n), load(gi + 2 * H, n), hidden(0),
                                               hidden(1), hidden(2), load(h, n));
    store(s.h, h, n);
    store(s.h, typed<T>(f.out) + r * H + j, n);
    if (f.saved != nullptr) {
      T* w = typed<T>(f.saved) + r * 4 * H + j;
      store(s.gates.r, w, n);
      store(s.gates.z, w + H, n);
      store(s.gates.n, w + 2 * H, n);
      store(s.gates.hn, w + 3 * H, n);
    }
  });
}

template <typename T>
void gru_backward(const rnn::GruStepBackward& b) {
  const int64_t H = b.hidden;
  for_each_vector<T>(b.rows, H, [&](int64_t r, int64_t j, int64_t n) {
    const T* w = typed<T>(b.saved) + r * 4 * H + j;
    const rnn::GruGates<Vec<T>> gates{load(w, n), load(w + H, n), load(w + 2 * H, n), load(w + 3 * H, n)};
    T* dh_row = typed<T>(b.dh) + r * H + j;
    Vec<T> dh = load(dh_row, n);
    if (b.grad_out != nullptr) dh = dh + load(typed<T>(b.grad_out) + r * H + j, n);
    const auto d = rnn::gru_backward(gates, load(typed<T>(b.h_prev) + r * H + j, n), dh);
    T* dgh = typed<T>(b.dgh) + r * 3 * H + j;
    store(d.dx_n, typed<T>(b.dxn) + r * H + j, n);
    store(d.dx_r, dgh, n);
    store(d.dx_z, dgh + H, n);
    store(d.dh_n, dgh + 2 * H, n);
    store(d.dh_prev, dh_row, n);
  });
}

// Small batches: fastdl's packed product (cpu/rnn_gemm.h); others: at::mm.
struct CpuRecurrent {
  RecurrentMm mm;
  at::Tensor packed;

  CpuRecurrent(const at::Tensor& b, int64_t batch) : mm(b, batch) {
    if (batch > kSmallBatch || b.numel() == 0) return;
    AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "fastdl.rnn", [&] { packed = pack_panels<scalar_t>({b}); });
  }

  void operator()(at::Tensor out, const at::Tensor& a, bool accumulate) const {
    if (!packed.defined() || a.size(0) == 0) return mm(out, a, accumulate);
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "fastdl.rnn", [&] {
      packed_product<scalar_t>(a.const_data_ptr<scalar_t>(), a.size(0), a.stride(0), packed.const_data_ptr<scalar_t>(),
                               mm.b.size(0), mm.b.size(1), out.data_ptr<scalar_t>(), out.stride(0), accumulate);
    });
  }
};

// The forward steps of one LSTM layer call of up to kSmallBatch rows, when re-reading W_ih every
// step costs at most kStepProjectionRowBytes per batch row: per step one product of [x_t | h | 1]
// (rows, I + S + 1; S the state's width, H or an LSTM's projection size P) with [W_ih^T; W_hh^T;
// b_ih + b_hh], packed once per call, into a buffer of the step's rows, then the cell kernel.
// LstmProjectFirst's product of every step's input up front writes (T N, 4H) values to freshly
// allocated memory: at batch 64 (input and hidden 256, 200 steps, one thread) at::mm ran that
// product at 64 GFLOP/s where it runs one of 256 rows at 90, the difference being the first touch
// of 52 MB (page faults, zeroing); here the pre-activations stay in cache (two threads: inference
// 1.28x as fast at that shape). Measured against projecting first (two threads, float32), by W_ih
// bytes per row: 128-256 KB 1.00-1.05x; 1 MB 0.96x (second layer of a bidirectional LSTM, hidden
// 512, batch 8) and 0.65x (hidden 256, batch 1).
constexpr int64_t kStepProjectionRowBytes = 256 << 10;

template <typename Backend>
class CpuLstmForward {
 public:
  CpuLstmForward(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                 const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh, const RnnSteps& s) {
    const int64_t batch = s.batch;
    if (batch > kSmallBatch || w_ih.numel() * w_ih.element_size() > batch * kStepProjectionRowBytes) {
      generic_.emplace(x, w_ih, w_hh, b_ih, b_hh, s);
      return;
    }
    const auto bias = rnn_detail::summed_bias(b_ih, b_hh);
    std::vector<at::Tensor> parts{w_ih.t(), w_hh.t()};
    if (bias) parts.push_back(bias->view({1, -1}));
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastdl.lstm", [&] { packed_ = pack_panels<scalar_t>(parts); });
    x_ = x.contiguous();
    inputs_ = x.size(1);
    width_ = packed_.size(1);
    rows_ = at::empty({batch, width_}, x.options());
    if (bias) rows_.narrow(1, width_ - 1, 1).fill_(1);
    pre_ = at::empty({batch, w_hh.size(0)}, x.options());
  }

  // h: the state (batch, S), S = H, or P with projections (then f.h, the kernel's output, is elsewhere).
  void operator()(rnn::LstmStepForward f, int64_t off, int64_t first, const at::Tensor& h, at::ScalarType dt) const {
    if (generic_) return (*generic_)(f, off, first, h, dt);
    AT_DISPATCH_FLOATING_TYPES(dt, "fastdl.lstm", [&] {
      using T = scalar_t;
      const int64_t I = inputs_, H = f.hidden, S = h.size(1), W = width_;
      T* a = rows_.data_ptr<T>() + first * W;
      const T* state = h.const_data_ptr<T>() + first * S;
      for (int64_t r = 0; r < f.rows; ++r) {
        std::copy_n(x_.const_data_ptr<T>() + (off + r) * I, I, a + r * W);
        std::copy_n(state + r * S, S, a + r * W + I);
      }
      T* pre = pre_.data_ptr<T>() + first * 4 * H;
      packed_product<T>(a, f.rows, W, packed_.const_data_ptr<T>(), W, 4 * H, pre, 4 * H, false);
      f.pre = pre;
      lstm_forward<T>(f);
    });
  }

 private:
  std::optional<LstmProjectFirst<Backend>> generic_;
  at::Tensor x_, packed_;
  at::Tensor rows_, pre_;  // per batch row: [x_t | h | 1] and the pre-activations of its current step
  int64_t inputs_ = 0, width_ = 0;
};

// The fewest batch rows per thread for which each thread runs its own rows' time loop. Each thread
// then reads all of W_hh every step (1 MB for hidden 256: from L3, not L2), where the product's column
// split keeps each thread's share in L2; with few rows per thread, or many threads, that read is not
// paid back. 16 is a reasoned bound, not a measured one: on two threads batch 8 (4 rows per thread)
// measured the same either way within this machine's noise (bench/NOTES.md, LSTM/GRU 7).
constexpr int64_t kMinRowsPerThread = 16;

struct CpuRnn {
  static constexpr bool kReducedPrecision = false;
  static constexpr bool kProjections = true;
  using Product = CpuRecurrent;
  using LstmForward = CpuLstmForward<CpuRnn>;
  using LstmProjectedForward = CpuLstmForward<CpuRnn>;
  using GruForward = GruProjectFirst<CpuRnn>;
  using BackwardSteps = BackwardThenProduct<CpuRnn>;

  // Each thread runs the whole time loop of its own rows (blocks of a multiple of the packed
  // product's four rows): no synchronization per step, where otherwise the product and the gate
  // kernel are each a parallel region. Two threads, LSTM hidden 256 at batch 64: about 2% faster.
  template <typename Fn>
  static void for_row_blocks(int64_t batch, const Fn& fn) {
    const int64_t threads = at::get_num_threads();
    if (threads < 2 || batch < kMinRowsPerThread * threads || at::in_parallel_region()) return fn(0, batch);
    const int64_t per = (batch + threads * 4 - 1) / (threads * 4) * 4, blocks = (batch + per - 1) / per;
    // The loop calls ATen (views, and at::mm above kSmallBatch): the workers take this thread's
    // dispatch state (below autograd, autocast excluded), as OpenMP threads start without it.
    const at::ThreadLocalState caller;
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      const at::ThreadLocalStateGuard guard(caller);
      for (int64_t b = begin; b < end; ++b) fn(b * per, std::min(batch, (b + 1) * per));
    });
  }

  static void lstm_forward(const rnn::LstmStepForward& f, at::ScalarType dt) {
    AT_DISPATCH_FLOATING_TYPES(dt, "fastdl.lstm", [&] { fastdl::lstm_forward<scalar_t>(f); });
  }
  static void lstm_backward(const rnn::LstmStepBackward& b, at::ScalarType dt) {
    AT_DISPATCH_FLOATING_TYPES(dt, "fastdl.lstm_backward", [&] { fastdl::lstm_backward<scalar_t>(b); });
  }
  static void gru_forward(const rnn::GruStepForward& f, at::ScalarType dt) {
    AT_DISPATCH_FLOATING_TYPES(dt, "fastdl.gru", [&] { fastdl::gru_forward<scalar_t>(f); });
  }
  static void gru_backward(const rnn::GruStepBackward& b, at::ScalarType dt) {
    AT_DISPATCH_FLOATING_TYPES(dt, "fastdl.gru_backward", [&] { fastdl::gru_backward<scalar_t>(b); });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, CPU, m) { RnnLayerOps<CpuRnn>::define_kernels(m); }

}  // namespace fastdl
