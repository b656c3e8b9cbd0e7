"""Inference-time fusion for eval models.

fastdl.fuse_conv_bn(model) traces the model with torch.fx and
- folds every BatchNorm2d whose input is a Conv2d used by nothing else into that convolution:
  W' = W * g / sqrt(v + eps) per output channel, b' = (b - m) * g / sqrt(v + eps) + beta,
  computed in float64 (g, beta: the BN's weight and bias; m, v: its running statistics);
- turns every other BatchNorm2d whose only user is a ReLU into a BatchNormReLU2d, which in eval runs
  both in one pass over the data (fastdl.ops.batch_norm_relu_inference), and removes the ReLU.
The result is a torch.fx.GraphModule computing the same function in eval mode.
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fastdl import ops
from fastdl.nn import REPLACEMENTS
from fastdl.nn._fallback import kernel_gap
from fastdl.nn.batchnorm import BatchNorm2d

__all__ = ["BatchNormReLU2d", "fuse_conv_bn"]

_RELU_FUNCTIONS = (torch.relu, torch.relu_, F.relu)


class BatchNormReLU2d(BatchNorm2d):
    """A BatchNorm2d followed by a ReLU (same parameters, buffers and state_dict keys as the
    BatchNorm2d). In eval with running statistics it runs as one fused kernel; otherwise it is
    relu(batch_norm(x))."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        tensors = (input, self.weight, self.bias)
        needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
        # The fused kernel is not differentiable: inference only (under torch.no_grad or inference_mode).
        if self.training or self.running_mean is None or needs_grad or kernel_gap(input) is not None:
            return torch.relu(super().forward(input))
        self._check_input_dim(input)
        return ops.batch_norm_relu_inference(input, self.running_mean, self.running_var, self.weight, self.bias,
                                             self.eps)


def _module(node: fx.Node, modules: dict, kind: type) -> nn.Module | None:
    if isinstance(node, fx.Node) and node.op == "call_module" and isinstance(modules[node.target], kind):
        return modules[node.target]
    return None


def _is_relu(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    return node.op == "call_function" and node.target in _RELU_FUNCTIONS and len(node.args) == 1 and not node.kwargs


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = bn.bias.double() if bn.bias is not None else torch.zeros_like(scale)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    conv.weight.copy_(conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
    folded = ((bias - bn.running_mean.double()) * scale + shift).to(conv.weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(folded)
    else:
        conv.bias.copy_(folded)


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping fastdl's layers whole as it keeps torch.nn's."""

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return isinstance(m, tuple(REPLACEMENTS.values())) or super().is_leaf_module(m, qualified_name)


def fuse_conv_bn(model: nn.Module, inplace: bool = False) -> fx.GraphModule:
    """The eval model `model` with its BatchNorm2d layers folded into the convolutions before them
    and the remaining BatchNorm2d + ReLU pairs fused (see the module docstring). With inplace=False
    (the default) `model` itself is left unchanged."""
    if model.training:
        raise ValueError("fastdl.fuse_conv_bn: call model.eval() first (folding uses the running statistics)")
    root = model if inplace else copy.deepcopy(model)
    traced = fx.GraphModule(root, _Tracer().trace(root))
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        bn = _module(node, modules, nn.BatchNorm2d)
        if bn is None or bn.running_mean is None:
            continue
        source = node.args[0]
        conv = _module(source, modules, nn.Conv2d)
        if conv is not None and len(source.users) == 1:
            _fold(conv, bn)
            node.replace_all_uses_with(source)
            traced.graph.erase_node(node)
        elif len(node.users) == 1 and _is_relu(next(iter(node.users)), modules) and type(bn) in (nn.BatchNorm2d, BatchNorm2d):
            relu = next(iter(node.users))
            bn.__class__ = BatchNormReLU2d
            relu.replace_all_uses_with(node)
            traced.graph.erase_node(relu)
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced
