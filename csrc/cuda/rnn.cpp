// The CUDA backend of the LSTM and GRU layer ops: common/rnn_layer_ops.h checks the call, sets the
// device and runs the time loop. Up to kSmallBatchRuleRows sequences, the steps of a layer call,
// forward or backward, are recorded and then run in one persistent launch of rnn_small_batch.cu (the
// recurrent product and the cell of each step together); above, each step is a cuBLAS product (at::mm
// on the current stream) and a launch of rnn_kernels.cu's cell kernel.
//
// The same backend with the small-batch kernel's host emulation is registered on CPU tensors as
// torch.ops.fastdl_cuda_emulation.lstm_layer, .gru_layer and their *_backward (batch up to
// kSmallBatchRows; schemas inferred, no defaults), so that tests check the kernels' indexing on
// machines without a GPU; not part of fastdl's API.

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/overrides.h"
#include "common/rnn_layer_ops.h"
#include "cuda/host_utils.h"
#include "cuda/rnn_kernels.h"
#include "cuda/rnn_small_batch.h"

namespace fastdl {
namespace {

using cuda::check_launch;
using cuda::dtype_of;

// Whether a layer call runs its steps in the small-batch kernel: on the device up to
// kSmallBatchRuleRows sequences (on an H100 1.5-3.1x faster than the per-step cuBLAS path at batch
// 1-16, bench/results/cuda/ab-rules.md), where FASTDL_RNN_SMALL_BATCH=always takes it up to the
// kernel's kSmallBatchRows (not yet measured above 16) and =never turns it off; the emulation always.
constexpr int64_t kSmallBatchRuleRows = 16;

template <typename Backend>
bool small_batch_steps(const RnnSteps& s) {
  if (s.hidden == 0 || s.batch > cuda::kSmallBatchRows) return false;
  return override_or("FASTDL_RNN_SMALL_BATCH", !Backend::kDevice || s.batch <= kSmallBatchRuleRows);
}

// Whether the current stream is being captured into a CUDA graph.
inline bool capturing() {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  return cudaStreamIsCapturing(cuda::current_stream(), &status) == cudaSuccess &&
         status != cudaStreamCaptureStatusNone;
}

// Runs the recorded steps of a layer call (rnn_small_batch.h): the kernel reads a copy of them in
// device memory, made from pinned memory on the current stream (the caching host allocator keeps the
// pinned block until the copy is done). Under CUDA graph capture the steps are launched one by one
// instead, their arguments by value: a captured copy would read the pinned block again at every
// replay, long after it went back to the allocator (and a replayed graph has no launch cost to save).
template <typename Backend, typename Args, typename Run>
void run_recorded(const char* op, const std::vector<Args>& steps, const at::Device& device, at::ScalarType dt,
                  Run run) {
  if (steps.empty()) return;
  at::Tensor on_device;
  if constexpr (Backend::kDevice) {
    if (capturing()) {
      return check_launch(op, run(steps.data(), nullptr, int64_t(steps.size()), dtype_of(dt), cuda::current_stream()));
    }
    const int64_t bytes = int64_t(steps.size() * sizeof(Args));
    const at::Tensor pinned = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    std::memcpy(pinned.data_ptr(), steps.data(), size_t(bytes));
    on_device = pinned.to(device, /*non_blocking=*/true);
  }
  const auto* device_steps = on_device.defined() ? static_cast<const Args*>(on_device.const_data_ptr()) : nullptr;
  check_launch(op, run(steps.data(), device_steps, int64_t(steps.size()), dtype_of(dt),
                       Backend::kDevice ? cuda::current_stream() : nullptr));
}

// The forward steps of a layer call at small batch (Step: LstmProjectFirst or GruProjectFirst, whose
// input projection it reuses, and which runs the steps of larger batches). Each call records its step;
// the last one runs them all. The kernel reads the previous state and writes the next into the other
// of two buffers: the layer's state h and a second one, alternating, starting from the one that makes
// the last step write h (for an odd number of steps the second buffer starts as a copy of h).
template <typename Backend, typename Step, int kGates>
class SmallBatchForward {
 public:
  SmallBatchForward(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh, const RnnSteps& s)
      : step_(x, w_ih, w_hh, b_ih, b_hh, s), steps_(s.steps), batch_(s.batch), device_(x.device()) {
    const bool small = small_batch_steps<Backend>(s);
    TORCH_CHECK(Backend::kDevice || small, "fastdl_cuda_emulation: the emulation runs the small-batch step only "
                "(batch up to ", cuda::kSmallBatchRows, "), but got batch ", s.batch);
    if (!small) return;
    w_hh_ = w_hh.contiguous();
    if constexpr (kGates == 3) b_hh_ = dense_or_none(b_hh);
    other_ = at::empty({s.batch, s.hidden}, x.options());
    recorded_.reserve(size_t(s.steps));
  }

  template <typename Args>
  void operator()(Args f, int64_t off, int64_t first, const at::Tensor& h, at::ScalarType dt) const {
    if (!other_.defined()) return step_(f, off, first, h, dt);
    // One block of rows on CUDA (SerialRows): first is 0 and each step is called once, in order.
    const int64_t calls = int64_t(recorded_.size());
    if (calls == 0 && steps_ % 2 == 1) other_.copy_(h);
    const bool from_h = (calls + steps_) % 2 == 0;
    void* h_prev = from_h ? h.data_ptr() : other_.data_ptr();
    void* h_next = from_h ? other_.data_ptr() : h.data_ptr();
    cuda::RecurrentStep args{kGates, f.rows, batch_, f.hidden, w_hh_.const_data_ptr(),
                             rnn_detail::row_ptr(step_.gi, off), nullptr, h_prev, h_next, nullptr, f.out, nullptr,
                             nullptr, Backend::kExecution};
    if constexpr (kGates == 4) {
      args.c = f.c;
      args.saved = f.gates;
      args.cells = f.cells;
    } else {
      args.b_hh = b_hh_.defined() ? b_hh_.const_data_ptr() : nullptr;
      args.saved = f.saved;
    }
    recorded_.push_back(args);
    if (int64_t(recorded_.size()) == steps_) {
      run_recorded<Backend>(kGates == 4 ? "fastdl.lstm" : "fastdl.gru", recorded_, device_, dt, cuda::recurrent_steps);
    }
  }

 private:
  Step step_;
  int64_t steps_, batch_;
  at::Device device_;
  at::Tensor w_hh_, b_hh_, other_;
  mutable std::vector<cuda::RecurrentStep> recorded_;
};

// Backward through time at small batch: each call records its step (rnn_small_batch.h,
// RecurrentStepBackward: the previous processed step's product d @ W_hh and this step's cell
// backward); finish() records the last step's product and runs them all. Larger batches:
// BackwardThenProduct.
template <typename Backend>
class SmallBatchBackward {
 public:
  SmallBatchBackward(const at::Tensor& w_hh, const RnnSteps& s)
      : generic_(w_hh, s), batch_(s.batch), small_(small_batch_steps<Backend>(s)), device_(w_hh.device()) {
    TORCH_CHECK(Backend::kDevice || small_, "fastdl_cuda_emulation: the emulation runs the small-batch step only "
                "(batch up to ", cuda::kSmallBatchRows, "), but got batch ", s.batch);
    if (!small_) return;
    w_hh_ = w_hh.contiguous();
    recorded_.reserve(size_t(s.steps + 1));
  }

  template <typename Args>
  void operator()(const Args& b, int64_t off, int64_t first, const at::Tensor& dh, const at::Tensor& d,
                  at::ScalarType dt) const {
    if (!small_) return generic_(b, off, first, dh, d, dt);
    constexpr bool kLstm = std::is_same_v<Args, rnn::LstmStepBackward>;
    cuda::RecurrentStepBackward args = step(kLstm ? 4 : 3, b.rows, b.hidden, dh, d);
    args.grad_out = b.grad_out;
    args.d = rnn_detail::row_ptr(d, off);
    if constexpr (kLstm) {
      args.saved = b.gates;
      args.cells = b.cells;
      args.c_prev = b.c_prev;
      args.dc = b.dc;
    } else {
      args.saved = b.saved;
      args.h_prev = b.h_prev;
      args.d_xn = b.dxn;
    }
    recorded_.push_back(args);
    prev_rows_ = b.rows;
    prev_off_ = off;
  }

  void finish(const at::Tensor& dh, const at::Tensor& d, at::ScalarType dt) const {
    if (!small_ || prev_rows_ == 0) return;
    const int gates = int(d.size(1) / dh.size(1));
    recorded_.push_back(step(gates, 0, dh.size(1), dh, d));
    run_recorded<Backend>(gates == 4 ? "fastdl.lstm_backward" : "fastdl.gru_backward", recorded_, device_, dt,
                          cuda::recurrent_steps_backward);
  }

 private:
  // The arguments every step shares: the previous processed step's product into dh.
  cuda::RecurrentStepBackward step(int gates, int64_t rows, int64_t hidden, const at::Tensor& dh,
                                   const at::Tensor& d) const {
    cuda::RecurrentStepBackward a{};
    a.gates = gates;
    a.rows = rows;
    a.prev_rows = prev_rows_;
    a.batch = batch_;
    a.hidden = hidden;
    a.w_hh = w_hh_.const_data_ptr();
    a.d_prev = prev_rows_ > 0 ? rnn_detail::row_ptr(d, prev_off_) : nullptr;
    a.dh = dh.data_ptr();
    a.execution = Backend::kExecution;
    return a;
  }

  BackwardThenProduct<Backend> generic_;
  int64_t batch_;
  bool small_;
  at::Device device_;
  at::Tensor w_hh_;
  mutable std::vector<cuda::RecurrentStepBackward> recorded_;
  mutable int64_t prev_rows_ = 0, prev_off_ = 0;
};

template <cuda::Execution kExecution_>
struct CudaRnn : SerialRows {
  static constexpr cuda::Execution kExecution = kExecution_;
  static constexpr bool kDevice = kExecution == cuda::Execution::device;
  static constexpr bool kReducedPrecision = kDevice;
  // The host emulation runs the small-batch kernel only; projections take the per-step kernels.
  static constexpr bool kProjections = kDevice;
  using Product = RecurrentMm;
  using LstmForward = SmallBatchForward<CudaRnn, LstmProjectFirst<CudaRnn>, 4>;
  using LstmProjectedForward = LstmProjectFirst<CudaRnn>;
  using GruForward = SmallBatchForward<CudaRnn, GruProjectFirst<CudaRnn>, 3>;
  using BackwardSteps = SmallBatchBackward<CudaRnn>;

  static void lstm_forward(const rnn::LstmStepForward& f, at::ScalarType dt) {
    check_launch("fastdl.lstm", cuda::lstm_step_forward(f, dtype_of(dt), cuda::current_stream()));
  }
  static void lstm_backward(const rnn::LstmStepBackward& b, at::ScalarType dt) {
    check_launch("fastdl.lstm_backward", cuda::lstm_step_backward(b, dtype_of(dt), cuda::current_stream()));
  }
  static void gru_forward(const rnn::GruStepForward& f, at::ScalarType dt) {
    check_launch("fastdl.gru", cuda::gru_step_forward(f, dtype_of(dt), cuda::current_stream()));
  }
  static void gru_backward(const rnn::GruStepBackward& b, at::ScalarType dt) {
    check_launch("fastdl.gru_backward", cuda::gru_step_backward(b, dtype_of(dt), cuda::current_stream()));
  }
};

using Emulated = RnnLayerOps<CudaRnn<cuda::Execution::host>>;

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, CUDA, m) { RnnLayerOps<CudaRnn<cuda::Execution::device>>::define_kernels(m); }

// The library itself is defined in cuda/conv2d.cpp.
TORCH_LIBRARY_FRAGMENT(fastdl_cuda_emulation, m) {
  m.def("lstm_layer", TORCH_FN(Emulated::lstm_layer));
  m.def("lstm_layer_backward", TORCH_FN(Emulated::lstm_layer_backward));
  m.def("gru_layer", TORCH_FN(Emulated::gru_layer));
  m.def("gru_layer_backward", TORCH_FN(Emulated::gru_layer_backward));
}

}  // namespace fastdl
