// fastdl's ops under torch.autocast on CUDA, as torch's own: torch casts aten::conv2d to the autocast
// dtype and its cuDNN RNNs to float16 (aten/src/ATen/cudnn/AutocastRNN.cpp), so here the convolutions
// and the LSTM/GRU layers cast their floating CUDA tensors to the autocast dtype (float16 by default,
// or bfloat16; float64 stays) and run with autocast off. Weights cast once per autocast region (autocast's cache of leaf
// tensors that require grad). The casts come before autograd, which records them, so the backward
// gets gradients in the reduced dtype and the parameters' gradients in theirs.
//
// Batch normalization and pooling are on no list: they run in the dtype they are given, as torch's
// (batch normalization with float32 parameters under a float16 input). On the CPU fastdl's ops stay in
// the dtype they are given (it has no float16/bfloat16 kernels); README.md says so.

#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "autograd/autograd_utils.h"

namespace fastdl {
namespace {

// The op itself, called with autocast excluded (WrapFunction's guard): the next key is autograd's.
template <typename Signature>
struct Redispatch;

template <typename Ret, typename... Args>
struct Redispatch<Ret(Args...)> {
  template <const char* kName>
  static Ret call(Args... args) {
    static const auto handle = op<Ret(Args...)>(kName);
    return handle.call(args...);
  }
};

constexpr char kConv2d[] = "fastdl::conv2d";
constexpr char kWinograd[] = "fastdl::conv2d_winograd";
constexpr char kLstm[] = "fastdl::lstm_layer";
constexpr char kGru[] = "fastdl::gru_layer";

template <typename Signature, const char* kName>
constexpr auto lower_precision() {
  constexpr Signature* redispatch = &Redispatch<Signature>::template call<kName>;
  return &at::autocast::WrapFunction<at::autocast::CastPolicy::lower_precision_fp, c10::DeviceType::CUDA, Signature,
                                     Signature, redispatch>::type::call;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdl, AutocastCUDA, m) {
  m.impl("conv2d", lower_precision<ConvSig, kConv2d>());
  m.impl("conv2d_winograd", lower_precision<WinogradSig, kWinograd>());
  m.impl("lstm_layer", lower_precision<LstmSig, kLstm>());
  m.impl("gru_layer", lower_precision<GruSig, kGru>());
}

}  // namespace fastdl
