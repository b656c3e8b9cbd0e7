#pragma once
// What one time step's fused element-wise kernel reads and writes, on raw pointers (no torch
// headers: the CUDA kernels include this). The layer loop (common/rnn_layer_ops.h) does the matrix
// products and hands each backend's kernels these descriptions. Every matrix is dense row-major with
// `rows` rows (the sequences still running at this step) and the width noted; element type T is
// the input's dtype, and C the LSTM cell state's (T, or float32 for float16/bfloat16 input).
// A nullable pointer that is null is not read (a zero gradient) or not written (nothing saved).

#include <cstdint>

namespace fastdl::rnn {

struct LstmStepForward {
  int64_t rows, hidden;
  const void* pre;  // T [rows, 4H]: the gates' pre-activations, W_ih x + b_ih + b_hh + W_hh h
  void* c;         // C [rows, H]: the previous cell state, overwritten with the new one
  void* h;         // T [rows, H]: the new hidden state (the state buffer)
  void* out;       // T [rows, H]: the new hidden state (this step's output rows)
  void* gates;     // T [rows, 4H] or null: activated i, f, g, o, saved for backward
  void* cells;     // C [rows, H] or null: the new cell state, saved for backward
};

struct LstmStepBackward {
  int64_t rows, hidden;
  const void* gates;   // T [rows, 4H]: as saved
  const void* cells;   // C [rows, H]: c of this step
  const void* c_prev;  // C [rows, H]: c of the step before (or c0)
  const void* grad_out;  // T [rows, H] or null: gradient of this step's output
  const void* dh;        // T [rows, H]: gradient of h from later steps and the final state
  void* dc;              // C [rows, H]: gradient of c, overwritten with that of c_prev
  void* dgates;          // T [rows, 4H]: gradient of the pre-activations
};

struct GruStepForward {
  int64_t rows, hidden;
  const void* gi;    // T [rows, 3H]: W_ih x + b_ih
  const void* gh;    // T [rows, 3H]: W_hh h
  const void* b_hh;  // T [3H] or null
  void* h;           // T [rows, H]: the previous state, overwritten with the new one
  void* out;         // T [rows, H]: the new state (this step's output rows)
  void* saved;       // T [rows, 4H] or null: r, z, n and W_hn h + b_hn, saved for backward
};

struct GruStepBackward {
  int64_t rows, hidden;
  const void* saved;     // T [rows, 4H]: as saved
  const void* h_prev;    // T [rows, H]
  const void* grad_out;  // T [rows, H] or null
  void* dh;              // T [rows, H]: gradient of h from later steps; overwritten with the direct
                         // part of h_prev's (the recurrent product is added by the caller)
  void* dxn;             // T [rows, H]: gradient of the n part of W_ih x + b_ih (its r and z parts
                         // are dgh's)
  void* dgh;             // T [rows, 3H]: gradient of W_hh h + b_hh
};

}  // namespace fastdl::rnn
