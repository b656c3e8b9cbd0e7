#pragma once
// The LSTM or GRU time steps of a small batch (rnn_small_batch.cu): the recurrent product W_hh h and
// the cell of a step together, every step of a layer call in one persistent launch. At batch 1-16 a
// step's product is a few hundred thousand multiply-adds, so the cuBLAS call plus the gate kernel of
// the general path (rnn_kernels.cu) cost mostly their host-side launch overhead (17-32 us a step on an
// H100; a launch per step of this kernel still took 11-29 us: bench/NOTES.md, LSTM/GRU CUDA 3-5).
//
// Every matrix is dense row-major; T is `dtype`, C the LSTM cell state's type (float for float16 and
// bfloat16, else T). The kernel reads the whole previous state of every row, so it cannot update the
// state in place (other blocks still read it): it reads h_prev and writes h_next, two buffers of
// `batch` rows, copying the rows that do not run at this step ([rows, batch)) unchanged.

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/dtype.h"

namespace fastdl::cuda {

// The most rows (sequences) a step may run here (cuda/rnn.cpp takes this path up to 16 by default,
// the batches measured; FASTDL_RNN_SMALL_BATCH=always up to here).
constexpr int64_t kSmallBatchRows = 64;

struct RecurrentStep {
  int gates;           // 4: LSTM (i, f, g, o); 3: GRU (r, z, n)
  int64_t rows;        // sequences running at this step: rows [0, rows), at most kSmallBatchRows
  int64_t batch;       // rows of h_prev, h_next and c
  int64_t hidden;      // H
  const void* w_hh;    // T [gates * H, H]
  const void* gi;      // T [rows, gates * H]: W_ih x + b_ih (+ b_hh for the LSTM)
  const void* b_hh;    // GRU: T [3H] or null (added to the hidden product, before the reset gate)
  const void* h_prev;  // T [batch, H]
  void* h_next;        // T [batch, H]
  void* c;             // LSTM: C [batch, H], the previous cell state, overwritten on rows [0, rows)
  void* out;           // T [rows, H]: the new state (this step's output rows)
  void* saved;         // T [rows, 4H] or null: LSTM i, f, g, o; GRU r, z, n, W_hn h + b_hn
  void* cells;         // LSTM: C [rows, H] or null: the new cell state
  Execution execution = Execution::device;
};

// One step of backward through time, the same way. The gradient of the previous state is
//
//   dh_prev = direct + d @ W_hh      (d: the gradient of the step's hidden pre-activations, rows x G*H;
//                                     direct: the GRU's z * dh; 0 for the LSTM)
//
// and a step's cell backward needs the dh_prev of the step after it (in time order; before it in
// processing order) for every hidden unit, so one launch does the previous processed step's product
// and then this step's cell: with p the previous processed step (prev_rows rows; none: 0),
//
//   1. products: for rows r < prev_rows, dh[r] += d_prev[r] @ W_hh (d_prev: p's rows of d);
//   2. cells: for rows r < rows, the cell backward with dh[r] + grad_out[r], writing this step's d
//      (and the GRU's d_input) and dh[r] = its direct part; rows [rows, batch) keep dh[r], which holds
//      their final gradient (they do not run at this step).
//
// After the last step, a call with rows = 0 adds its product: dh is then the gradient of h0. Each block
// reads and writes dh only in its own hidden units, so dh is updated in place.
struct RecurrentStepBackward {
  int gates;            // 4: LSTM; 3: GRU
  int64_t rows;         // sequences running at this step (0: the product of the previous one only)
  int64_t prev_rows;    // sequences of the previous processed step, or 0
  int64_t batch;        // rows of dh and dc
  int64_t hidden;       // H
  const void* w_hh;     // T [gates * H, H]
  const void* d_prev;   // T [prev_rows, gates * H]: the previous processed step's d, or null
  void* dh;             // T [batch, H]: as above
  const void* saved;    // T [rows, 4H]: what the forward saved (LSTM gates; GRU r, z, n, W_hn h + b_hn)
  const void* cells;    // LSTM: C [rows, H], the step's cell state
  const void* c_prev;   // LSTM: C [rows, H], the cell state before the step
  const void* h_prev;   // GRU: T [rows, H], the state before the step
  const void* grad_out; // T [rows, H] or null: the gradient of the step's output
  void* dc;             // LSTM: C [batch, H], the gradient of c, overwritten with that of c_prev on [0, rows)
  void* d;              // T [rows, gates * H]: this step's d (LSTM: of the pre-activations; GRU: of W_hh h + b_hh)
  void* d_xn;           // GRU: T [rows, H], the gradient of the n part of W_ih x + b_ih (r, z: d's)
  Execution execution = Execution::device;
};

// Every step of a layer call, steps[0, count) in order (forward: time order, or reverse; backward:
// processing order, then the call with rows = 0), in one launch of a persistent kernel: the blocks
// stay resident (cooperative launch) and wait for each other between steps. device_steps is a copy of
// steps[0, count) in device memory, which the kernel reads. Where the blocks cannot all be resident
// at once, or device_steps is null, each step is a launch of its own. Emulated calls (execution host
// in steps[0]) run the same blocks and threads one after another on host memory, step by step, float
// and double only (others return cudaErrorNotSupported), and ignore `stream`.
cudaError_t recurrent_steps(const RecurrentStep* steps, const RecurrentStep* device_steps, int64_t count,
                            DType dtype, cudaStream_t stream);
cudaError_t recurrent_steps_backward(const RecurrentStepBackward* steps, const RecurrentStepBackward* device_steps,
                                     int64_t count, DType dtype, cudaStream_t stream);

}  // namespace fastdl::cuda
