#pragma once
// Launchers of the CUDA LSTM and GRU step kernels (rnn_kernels.cu): one time step's fused
// element-wise forward or backward (common/rnn_gates.h) on the raw pointers that
// common/rnn_steps.h describes. The host side (rnn.cpp, with common/rnn_layer_ops.h) runs the time
// loop and the cuBLAS products; everything here is asynchronous on `stream`.

#include <cuda_runtime_api.h>

#include "common/rnn_steps.h"
#include "cuda/dtype.h"

namespace fastdl::cuda {

// T is `dtype`; the LSTM cell state C is float for f16/bf16 (float for f32, double for f64).
cudaError_t lstm_step_forward(const rnn::LstmStepForward& args, DType dtype, cudaStream_t stream);
cudaError_t lstm_step_backward(const rnn::LstmStepBackward& args, DType dtype, cudaStream_t stream);
cudaError_t gru_step_forward(const rnn::GruStepForward& args, DType dtype, cudaStream_t stream);
cudaError_t gru_step_backward(const rnn::GruStepBackward& args, DType dtype, cudaStream_t stream);

}  // namespace fastdl::cuda
