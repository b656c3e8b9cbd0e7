"""Drop-in LSTM and GRU layers and cells: subclasses of torch.nn.LSTM, GRU, LSTMCell and GRUCell
(same constructor, parameters, state_dict keys, flatten_parameters, repr) whose forward runs
fastdl's kernels. Layers take (T, N, I), (N, T, I) with batch_first, unbatched (T, I) or a
PackedSequence (enforce_sorted or not), LSTM with proj_size too; cells (N, I) or unbatched (I,).
Inputs no kernel covers fall back to torch.nn, visibly (nn/_fallback.py)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from fastdl import ops
from fastdl.nn._fallback import fall_back, kernel_gap
from fastdl.ops.rnn import check_state_pair


def _layer_forward(module: torch.nn.RNNBase, input, hx, parent_forward):
    is_lstm = module.mode == "LSTM"
    data = input.data if isinstance(input, PackedSequence) else input
    if (gap := kernel_gap(data)) is not None:
        fall_back(module, gap)
        return parent_forward(input, hx)
    name = type(module).__name__
    directions = 2 if module.bidirectional else 1
    batch_sizes = sorted_indices = unsorted_indices = None
    unbatched = False
    if isinstance(input, PackedSequence):
        data, batch_sizes, sorted_indices, unsorted_indices = input
        batch = int(batch_sizes[0])
    else:
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        unbatched = input.dim() == 2
        batch_dim = 0 if module.batch_first else 1
        if unbatched:
            data = input.unsqueeze(batch_dim)
        batch = data.size(batch_dim)
        if hx is not None:
            hx = _batched_states(name, hx, is_lstm, unbatched)
    if hx is None:
        proj = getattr(module, "proj_size", 0)
        h0 = data.new_zeros((module.num_layers * directions, batch, proj or module.hidden_size))
        hx = (h0, data.new_zeros((module.num_layers * directions, batch, module.hidden_size))) if is_lstm else h0
    else:
        hx = module.permute_hidden(hx, sorted_indices)
    module.check_forward_args(data, hx, batch_sizes)
    weights = [getattr(module, n) for n in module._flat_weights_names]
    run = ops.lstm if is_lstm else ops.gru
    out, states = run(data, weights, hx, num_layers=module.num_layers, dropout=module.dropout,
                      training=module.training, bidirectional=module.bidirectional,
                      batch_first=module.batch_first, batch_sizes=batch_sizes)
    if batch_sizes is not None:
        return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), \
            module.permute_hidden(states, unsorted_indices)
    if unbatched:
        out = out.squeeze(0 if module.batch_first else 1)
        states = (states[0].squeeze(1), states[1].squeeze(1)) if is_lstm else states.squeeze(1)
    return out, states


def _batched_states(name, hx, is_lstm, unbatched):
    """torch.nn's checks of given states' dimensions; unbatched states gain the batch dimension."""
    want = 2 if unbatched else 3
    kind = "unbatched 2-D" if unbatched else "batched 3-D"
    if is_lstm:
        if hx[0].dim() != want or hx[1].dim() != want:
            raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                               f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
        return (hx[0].unsqueeze(1), hx[1].unsqueeze(1)) if unbatched else hx
    if hx.dim() != want:
        raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {hx.dim()}-D tensor")
    return hx.unsqueeze(1) if unbatched else hx


def _cell_forward(module: torch.nn.RNNCellBase, input: Tensor, hx, parent_forward):
    is_lstm = isinstance(module, torch.nn.LSTMCell)
    if (gap := kernel_gap(input)) is not None:
        fall_back(module, gap)
        return parent_forward(input, hx)
    name = type(module).__name__
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    if is_lstm and hx is not None:
        check_state_pair(hx)
    states = hx if is_lstm or hx is None else (hx,)
    for idx, value in enumerate(states or ()):
        if value.dim() not in (1, 2):
            what = f"hx[{idx}]" if is_lstm else "hidden"
            raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {value.dim()}D instead")
    unbatched = input.dim() == 1
    if unbatched:
        input = input.unsqueeze(0)
    if states is None:
        zeros = input.new_zeros((input.size(0), module.hidden_size))
        states = (zeros, zeros) if is_lstm else (zeros,)
    elif unbatched:
        states = tuple(s.unsqueeze(0) for s in states)
    weights = (module.weight_ih, module.weight_hh, module.bias_ih, module.bias_hh)
    if is_lstm:
        h, c = ops.lstm_cell(input, tuple(states), *weights)
        return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)
    h = ops.gru_cell(input, states[0], *weights)
    return h.squeeze(0) if unbatched else h


class LSTM(torch.nn.LSTM):
    def forward(self, input, hx=None):
        return _layer_forward(self, input, hx, super().forward)


class GRU(torch.nn.GRU):
    def forward(self, input, hx=None):
        return _layer_forward(self, input, hx, super().forward)


class LSTMCell(torch.nn.LSTMCell):
    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        return _cell_forward(self, input, hx, super().forward)


class GRUCell(torch.nn.GRUCell):
    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return _cell_forward(self, input, hx, super().forward)
