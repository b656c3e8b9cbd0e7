// The CUDA backend of the LSTM and GRU layer ops: common/rnn_layer_ops.h checks the call, sets the
// device and runs the time loop with cuBLAS products (at::mm on the current stream); each step's
// element-wise work is a launch of rnn_kernels.cu on the same stream.

#include <torch/library.h>

#include "common/rnn_layer_ops.h"
#include "cuda/host_utils.h"
#include "cuda/rnn_kernels.h"

namespace fastdl {
namespace {

using cuda::check_launch;
using cuda::current_stream;
using cuda::dtype_of;

struct CudaRnn : SerialRows {
  static constexpr bool kReducedPrecision = true;
  using Product = RecurrentMm;
  using LstmForward = LstmProjectFirst<CudaRnn>;

  static void lstm_forward(const rnn::LstmStepForward& f, at::ScalarType dt) {
    check_launch("fastdl.lstm", cuda::lstm_step_forward(f, dtype_of(dt), current_stream()));
  }
  static void lstm_backward(const rnn::LstmStepBackward& b, at::ScalarType dt) {
    check_launch("fastdl.lstm_backward", cuda::lstm_step_backward(b, dtype_of(dt), current_stream()));
  }
  static void gru_forward(const rnn::GruStepForward& f, at::ScalarType dt) {
    check_launch("fastdl.gru", cuda::gru_step_forward(f, dtype_of(dt), current_stream()));
  }
  static void gru_backward(const rnn::GruStepBackward& b, at::ScalarType dt) {
    check_launch("fastdl.gru_backward", cuda::gru_step_backward(b, dtype_of(dt), current_stream()));
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, CUDA, m) { RnnLayerOps<CudaRnn>::define_kernels(m); }

}  // namespace fastdl
