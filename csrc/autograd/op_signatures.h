#pragma once
// The C++ signatures of fastdl's registered ops (csrc/ops.cpp has their schemas), for typed dispatcher
// handles: the autograd formulas (csrc/autograd/*.cpp) and the eager bindings (csrc/python_module.cpp).
// A signature that disagrees with its schema fails when the handle is made (at import).

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace fastdl {

namespace sig {
using at::IntArrayRef;
using at::Tensor;
using OptTensor = std::optional<Tensor>;
using Mask = std::array<bool, 3>;
using Tensors2 = std::tuple<Tensor, Tensor>;
using Tensors3 = std::tuple<Tensor, Tensor, Tensor>;
}  // namespace sig

// ---- pooling
using MaxPoolSig = sig::Tensor(const sig::Tensor&, sig::IntArrayRef, sig::IntArrayRef, sig::IntArrayRef,
                               sig::IntArrayRef, bool);
using MaxPoolIndicesSig = sig::Tensors2(const sig::Tensor&, sig::IntArrayRef, sig::IntArrayRef, sig::IntArrayRef,
                                        sig::IntArrayRef, bool);
using MaxPoolBackwardSig = sig::Tensor(const sig::Tensor&, const sig::Tensor&, const sig::Tensor&, sig::IntArrayRef,
                                       sig::IntArrayRef, sig::IntArrayRef, sig::IntArrayRef, bool);
using AvgPoolSig = sig::Tensor(const sig::Tensor&, sig::IntArrayRef, sig::IntArrayRef, sig::IntArrayRef, bool, bool,
                               std::optional<int64_t>);
using AvgPoolBackwardSig = sig::Tensor(const sig::Tensor&, const sig::Tensor&, sig::IntArrayRef, sig::IntArrayRef,
                                       sig::IntArrayRef, bool, bool, std::optional<int64_t>);
using AdaptiveSig = sig::Tensor(const sig::Tensor&, sig::IntArrayRef);
using AdaptiveBackwardSig = sig::Tensor(const sig::Tensor&, const sig::Tensor&);

// ---- batch normalization
using BatchNormSig = sig::Tensors3(const sig::Tensor&, const sig::OptTensor&, const sig::OptTensor&,
                                   const sig::OptTensor&, const sig::OptTensor&, bool, double, double);
using BatchNormReluSig = sig::Tensor(const sig::Tensor&, const sig::OptTensor&, const sig::OptTensor&,
                                     const sig::Tensor&, const sig::Tensor&, double);
using BatchNormBackwardSig = sig::Tensors3(const sig::Tensor&, const sig::Tensor&, const sig::OptTensor&,
                                           const sig::Tensor&, const sig::Tensor&, bool, sig::Mask);

// ---- convolution
using ConvSig = sig::Tensor(const sig::Tensor&, const sig::Tensor&, const sig::OptTensor&, sig::IntArrayRef,
                            sig::IntArrayRef, sig::IntArrayRef, int64_t);
using ConvBackwardSig = sig::Tensors3(const sig::Tensor&, const sig::Tensor&, const sig::Tensor&, sig::IntArrayRef,
                                      sig::IntArrayRef, sig::IntArrayRef, int64_t, sig::Mask);
using WinogradSig = sig::Tensor(const sig::Tensor&, const sig::Tensor&, const sig::OptTensor&, sig::IntArrayRef,
                                int64_t);
using WinogradBackwardSig = sig::Tensors3(const sig::Tensor&, const sig::Tensor&, const sig::Tensor&,
                                          sig::IntArrayRef, int64_t, sig::Mask);

// ---- LSTM / GRU layers
using LstmSig = std::tuple<sig::Tensor, sig::Tensor, sig::Tensor, sig::Tensor, sig::Tensor, sig::Tensor>(
    const sig::Tensor&, const sig::Tensor&, const sig::Tensor&, const sig::Tensor&, const sig::Tensor&,
    const sig::OptTensor&, const sig::OptTensor&, const sig::OptTensor&, sig::IntArrayRef, bool, bool);
using LstmBackwardSig = std::tuple<sig::Tensor, sig::Tensor, sig::Tensor, sig::Tensor, sig::Tensor, sig::Tensor,
                                   sig::Tensor, sig::Tensor>(
    const sig::OptTensor&, const sig::OptTensor&, const sig::OptTensor&, const sig::Tensor&, const sig::Tensor&,
    const sig::Tensor&, const sig::Tensor&, const sig::Tensor&, const sig::OptTensor&, const sig::Tensor&,
    const sig::Tensor&, const sig::Tensor&, const sig::Tensor&, sig::IntArrayRef, bool, sig::Mask);
using GruSig = sig::Tensors3(const sig::Tensor&, const sig::Tensor&, const sig::Tensor&, const sig::Tensor&,
                             const sig::OptTensor&, const sig::OptTensor&, sig::IntArrayRef, bool, bool);
using GruBackwardSig = std::tuple<sig::Tensor, sig::Tensor, sig::Tensor, sig::Tensor, sig::Tensor, sig::Tensor>(
    const sig::OptTensor&, const sig::OptTensor&, const sig::Tensor&, const sig::Tensor&, const sig::Tensor&,
    const sig::Tensor&, const sig::Tensor&, const sig::Tensor&, sig::IntArrayRef, bool, sig::Mask);

}  // namespace fastdl
