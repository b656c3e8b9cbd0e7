#pragma once
// Launchers of the CUDA pooling kernels (pool2d_kernels.cu). Pointers are device pointers to dense
// tensors in `layout` (N,C,H,W or N,H,W,C); each launcher enqueues on `stream` and returns the launch
// status. Callers (pool2d.cpp) check arguments, set the device and skip empty outputs.

#include <cuda_runtime_api.h>

#include "common/pool2d_windows.h"
#include "cuda/dtype.h"

namespace fastdl::cuda {

// indices may be null (values only).
cudaError_t max_pool2d_forward(DType dtype, Layout layout, const void* input, void* output,
                               int64_t* indices, const Pool2dShape& shape, const MaxAxis& h,
                               const MaxAxis& w, cudaStream_t stream);

// Writes every element of grad_input: each input element sums the gradients of the outputs whose
// recorded index names it and of which it is a tap (a window lying wholly in the padding records an
// index outside itself and passes nothing). Indices naming no element are ignored.
cudaError_t max_pool2d_backward(DType dtype, Layout layout, const void* grad_output,
                                const int64_t* indices, void* grad_input, const Pool2dShape& shape,
                                const MaxAxis& h, const MaxAxis& w, cudaStream_t stream);

cudaError_t avg_pool2d_forward(DType dtype, Layout layout, const void* input, void* output,
                               const Pool2dShape& shape, const AvgWindows<AvgAxis>& windows,
                               cudaStream_t stream);
cudaError_t avg_pool2d_forward(DType dtype, Layout layout, const void* input, void* output,
                               const Pool2dShape& shape, const AvgWindows<AdaptiveAxis>& windows,
                               cudaStream_t stream);

cudaError_t avg_pool2d_backward(DType dtype, Layout layout, const void* grad_output,
                                void* grad_input, const Pool2dShape& shape,
                                const AvgWindows<AvgAxis>& windows, cudaStream_t stream);
cudaError_t avg_pool2d_backward(DType dtype, Layout layout, const void* grad_output,
                                void* grad_input, const Pool2dShape& shape,
                                const AvgWindows<AdaptiveAxis>& windows, cudaStream_t stream);

}  // namespace fastdl::cuda
