// Every fastdl op's schema, in one place. Backends register kernels for them in their own files
// (csrc/cpu/*.cpp, csrc/cuda/*.cpp); Python adds fake kernels and autograd (python/fastdl/ops/).
//
// Shapes: images are N,C,H,W (or C,H,W for one image); batch normalization also takes N,C and N,C,L.
// Backward ops take the forward's input so they can return a gradient of its exact shape and
// memory format.

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

  // ---- batch normalization ----------------------------------------------------------------------
  // input N,C / N,C,L / N,C,H,W; weight, bias, running_mean, running_var: C values in the input's
  // dtype (or float32 for a float16/bfloat16 input). Training normalizes with the batch's
  // statistics and updates the running ones in place (momentum is the weight of the batch; the
  // variance folded in is unbiased); eval normalizes with the running ones. Returns the output and
  // the mean and 1/sqrt(var + eps) used, in float32 (float64 for float64 input).
  m.def(
      "batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, bool training, float momentum, float eps) -> (Tensor, Tensor, Tensor)");
  // Inference only: relu(batch_norm(...)) with the running statistics, in one pass over the data
  // (fastdl.fuse_conv_bn puts it where a BatchNorm feeds only a ReLU). Not differentiable.
  m.def(
      "batch_norm_relu_inference(Tensor input, Tensor? weight, Tensor? bias, Tensor running_mean, "
      "Tensor running_var, float eps) -> Tensor");
  // Gradients for input, weight and bias (an output whose output_mask entry is false is empty).
  m.def(
      "batch_norm_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor save_mean, "
      "Tensor save_invstd, bool training, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");

  // ---- 2-D convolution --------------------------------------------------------------------------
  // Cross-correlation as torch.nn.functional.conv2d with numeric padding (the Python wrapper turns
  // 'same' and 'valid' into numbers, padding the input first where 'same' is asymmetric).
  // input N,C,H,W or C,H,W; weight K,C/groups,R,S; bias K values; sizes one int or two.
  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias=None, int[2] stride=1, int[2] padding=0, "
      "int[2] dilation=1, int groups=1) -> Tensor");
  // Gradients for input, weight and bias (an output whose output_mask entry is false is empty).
  m.def(
      "conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // Winograd F(tile x tile, 3x3): the same function as conv2d for a 3x3 weight, stride 1,
  // dilation 1 and one group; tile is 2 or 4. The backward's grad_input is Winograd too, its
  // grad_weight Winograd where the backend finds it faster (else direct), its grad_bias direct.
  m.def("conv2d_winograd(Tensor input, Tensor weight, Tensor? bias, int[2] padding, int tile) -> Tensor");
  m.def(
      "conv2d_winograd_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] padding, int tile, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");

  // ---- LSTM and GRU layers (common/rnn_layer_ops.h) ------------------------------------------------
  // One layer in one direction; fastdl.ops.lstm / gru stack layers and directions, and the cells
  // are one-step layers. input (T, N, I), or a PackedSequence's data (sum(batch_sizes), I) with its
  // batch_sizes (step t runs the first batch_sizes[t] sequences); h0, c0 (N, H); weight_ih (G*H, I),
  // weight_hh (G*H, H), biases (G*H): PyTorch's layout and gate order (LSTM i,f,g,o: G = 4; GRU
  // r,z,n: G = 3). reverse runs the steps from last to first. Returns the output (T, N, H) or
  // (sum(batch_sizes), H), the final states (N, H) and what backward needs (empty unless
  // keep_workspace): LSTM activated gates (rows, 4H) and cell states (rows, H; float32 for
  // float16/bfloat16), GRU r, z, n and W_hn h + b_hn (rows, 4H). An LSTM with projections
  // (torch.nn.LSTM's proj_size P) takes weight_hr (P, H): h0, the output, the final h and weight_hh's
  // columns are then P wide, and backward also needs each step's o * tanh(c) (rows, H; the sixth
  // output, else empty).
  m.def(
      "lstm_layer(Tensor input, Tensor h0, Tensor c0, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "
      "Tensor? bias_hh, Tensor? weight_hr, int[] batch_sizes, bool reverse, bool keep_workspace) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Gradients for input, h0, c0, weight_ih, weight_hh, weight_hr, bias_ih, bias_hh; output_mask: (input,
  // weights, biases), an output not wanted (or weight_hr's, without it) is empty. A missing gradient of
  // an output counts as zeros.
  m.def(
      "lstm_layer_backward(Tensor? grad_output, Tensor? grad_hy, Tensor? grad_cy, Tensor input, Tensor h0, "
      "Tensor c0, Tensor weight_ih, Tensor weight_hh, Tensor? weight_hr, Tensor output, Tensor gates, "
      "Tensor cells, Tensor hidden, int[] batch_sizes, bool reverse, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "gru_layer(Tensor input, Tensor h0, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "
      "Tensor? bias_hh, int[] batch_sizes, bool reverse, bool keep_workspace) -> (Tensor, Tensor, Tensor)");
  // Gradients for input, h0, weight_ih, weight_hh, bias_ih, bias_hh (output_mask as for the LSTM).
  m.def(
      "gru_layer_backward(Tensor? grad_output, Tensor? grad_hy, Tensor input, Tensor h0, Tensor weight_ih, "
      "Tensor weight_hh, Tensor output, Tensor saved, int[] batch_sizes, bool reverse, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}
