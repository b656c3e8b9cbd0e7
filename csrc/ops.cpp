// Every fastdl op's schema, in one place. Backends register kernels for them in their own files
// (csrc/cpu/*.cpp, csrc/cuda/*.cpp); Python adds fake kernels and autograd (python/fastdl/ops/).
//
// Shapes: images are N,C,H,W (or C,H,W for one image). Backward ops take the forward's input so
// they can return a gradient of its exact shape and memory format.

#include <torch/library.h>

TORCH_LIBRARY(fastdl, m) {
  // ---- 2-D pooling ------------------------------------------------------------------------------
  // Sizes are one int (both dimensions) or two; an empty stride means stride = kernel_size.
  m.def(
      "max_pool2d(Tensor input, int[2] kernel_size, int[2] stride=[], int[2] padding=0, "
      "int[2] dilation=1, bool ceil_mode=False) -> Tensor");
  // indices: flat positions h*W + w of each maximum inside its input plane, as torch returns them.
  m.def(
      "max_pool2d_with_indices(Tensor input, int[2] kernel_size, int[2] stride=[], "
      "int[2] padding=0, int[2] dilation=1, bool ceil_mode=False) -> (Tensor, Tensor)");
  m.def(
      "max_pool2d_backward(Tensor grad_output, Tensor input, Tensor indices, int[2] kernel_size, "
      "int[2] stride=[], int[2] padding=0, int[2] dilation=1, bool ceil_mode=False) -> Tensor");
  m.def(
      "avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride=[], int[2] padding=0, "
      "bool ceil_mode=False, bool count_include_pad=True, int? divisor_override=None) -> Tensor");
  m.def(
      "avg_pool2d_backward(Tensor grad_output, Tensor input, int[2] kernel_size, "
      "int[2] stride=[], int[2] padding=0, bool ceil_mode=False, bool count_include_pad=True, "
      "int? divisor_override=None) -> Tensor");
  m.def("adaptive_avg_pool2d(Tensor input, int[2] output_size) -> Tensor");
  m.def("adaptive_avg_pool2d_backward(Tensor grad_output, Tensor input) -> Tensor");
}
