"""Swap a model's stock torch.nn layers for fastdl's and back.

Each fastdl.nn layer subclasses the layer it replaces and adds no state, so a swap only changes the
module's class: parameters, buffers, hooks, state_dict keys and the optimizer's references stay the
same objects. Only modules of exactly a mapped type are swapped (a user's subclass of
torch.nn.MaxPool2d keeps its own forward).
"""

from __future__ import annotations

import copy

from torch import nn

from fastdl.nn import REPLACEMENTS

__all__ = ["convert", "revert"]


def _swap(model: nn.Module, mapping: dict[type, type], inplace: bool) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, but got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    for module in model.modules():
        replacement = mapping.get(type(module))
        if replacement is not None:
            module.__class__ = replacement
    return model


def convert(model: nn.Module, inplace: bool = True) -> nn.Module:
    """Make every torch.nn layer of `model` that fastdl implements run on fastdl's kernels.

    With inplace=False the model is deep-copied first. Returns the converted model.
    """
    return _swap(model, REPLACEMENTS, inplace)


def revert(model: nn.Module, inplace: bool = True) -> nn.Module:
    """Undo convert(): fastdl.nn layers become their torch.nn parents again."""
    return _swap(model, {v: k for k, v in REPLACEMENTS.items()}, inplace)
