"""LSTM and GRU cells and layers on fastdl's kernels.

Shapes (T time steps, N sequences, I input features, H hidden units, L layers, D directions):
    lstm / gru:  input (T, N, I), or (N, T, I) with batch_first=True, or the data of a
                 PackedSequence (sum(batch_sizes), I) with its batch_sizes; hx: h0 (L*D, N, H)
                 (and c0 for the LSTM); returns the output (T, N, D*H) (or packed data) and the
                 final states (L*D, N, H).
    cells:       input (N, I), h and c (N, H).
Weights are torch.nn's: per layer and direction weight_ih (G*H, I), weight_hh (G*H, H) and, with
bias, bias_ih and bias_hh (G*H), in the order of torch.nn.LSTM's _flat_weights (G = 4, gates
i,f,g,o; GRU: G = 3, gates r,z,n). An LSTM with projections (torch.nn.LSTM's proj_size P) has a
fifth (third without bias) weight per layer and direction, weight_hr (P, H): h = W_hr (o * tanh(c)),
so h0, h_n and the output are P wide per direction (c0 and c_n stay H wide) and weight_hh is
(4H, P). Dtypes: float32 and float64 on CPU and CUDA, float16 and bfloat16 on CUDA.

Each layer and direction is one op call (torch.ops.fastdl.lstm_layer / gru_layer) whose time loop
runs in C++; layers, directions and dropout between layers are composed here (on CUDA the two
directions of a layer run on two streams, _on_two_streams). A cell is a layer of
one step. The autograd formulas are registered in C++ (csrc/autograd/rnn.cpp); below are the fake
kernels for torch.compile and export.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fastdl.ops._eager import ops_for

__all__ = ["gru", "gru_cell", "lstm", "lstm_cell"]


def lstm_cell(input: Tensor, hx: tuple[Tensor, Tensor], weight_ih: Tensor, weight_hh: Tensor,
              bias_ih: Tensor | None = None, bias_hh: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One LSTM step, as torch.nn.LSTMCell: input (N, I), hx = (h, c) each (N, H) -> (h', c')."""
    check_state_pair(hx)
    _check_cell("lstm_cell", input, {"hx[0]": hx[0], "hx[1]": hx[1]}, weight_ih, weight_hh)
    _, h, c, _, _, _ = ops_for(input).lstm_layer(input.unsqueeze(0), hx[0], hx[1], weight_ih, weight_hh, bias_ih,
                                                 bias_hh, None, [], False, False)
    return h, c


def gru_cell(input: Tensor, hx: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None = None,
             bias_hh: Tensor | None = None) -> Tensor:
    """One GRU step, as torch.nn.GRUCell: input (N, I), hx (N, H) -> h'."""
    _check_cell("gru_cell", input, {"hx": hx}, weight_ih, weight_hh)
    _, h, _ = ops_for(input).gru_layer(input.unsqueeze(0), hx, weight_ih, weight_hh, bias_ih, bias_hh, [], False,
                                       False)
    return h


def check_state_pair(hx) -> None:
    """An LSTM cell's hx must be (h, c): fastdl.nn.LSTMCell checks it before looking inside."""
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        got = f"a sequence of {len(hx)}" if isinstance(hx, (tuple, list)) else type(hx).__name__
        raise ValueError(f"fastdl.lstm_cell: expected hx to be a pair (h, c) of tensors, but got {got}")


def _check_cell(name, input, states, weight_ih, weight_hh):
    # The layer op would name h0 and c0 (and blame weight_ih for the input's width); a cell's caller knows
    # the states as hx.
    if input.dim() != 2:
        raise ValueError(f"fastdl.{name}: expected input of shape (N, I), but got shape {tuple(input.shape)}")
    if weight_ih.dim() == 2 and input.shape[1] != weight_ih.shape[1]:
        raise RuntimeError(f"fastdl.{name}: expected input of shape (N, {weight_ih.shape[1]}) (input_size, the "
                           f"columns of weight_ih), but got shape {tuple(input.shape)}")
    want = (input.shape[0], weight_hh.shape[-1])
    for label, state in states.items():
        if tuple(state.shape) != want:
            raise RuntimeError(f"fastdl.{name}: expected {label} of shape {want}, but got shape {tuple(state.shape)}")


def lstm(input: Tensor, weights: Sequence[Tensor], hx: tuple[Tensor, Tensor] | None = None, *, num_layers: int = 1,
         dropout: float = 0.0, training: bool = False, bidirectional: bool = False, batch_first: bool = False,
         batch_sizes: Sequence[int] | Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Multi-layer LSTM as torch.nn.LSTM -> output, (h_n, c_n); weights as torch.nn.LSTM's _flat_weights
    (with proj_size, weight_hr last per layer and direction)."""
    out, (h, c) = _layers("lstm", input, weights, hx, num_layers, dropout, training, bidirectional, batch_first,
                          batch_sizes)
    return out, (h, c)


def gru(input: Tensor, weights: Sequence[Tensor], hx: Tensor | None = None, *, num_layers: int = 1,
        dropout: float = 0.0, training: bool = False, bidirectional: bool = False, batch_first: bool = False,
        batch_sizes: Sequence[int] | Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Multi-layer GRU as torch.nn.GRU -> output, h_n."""
    out, (h,) = _layers("gru", input, weights, None if hx is None else (hx,), num_layers, dropout, training,
                        bidirectional, batch_first, batch_sizes)
    return out, h


def _layers(kind, input, weights, hx, num_layers, dropout, training, bidirectional, batch_first, batch_sizes):
    directions = 2 if bidirectional else 1
    counts = (2, 3, 4, 5) if kind == "lstm" else (2, 4)  # LSTM: 3 or 5 with weight_hr (projections)
    if num_layers < 1 or len(weights) not in [n * num_layers * directions for n in counts]:
        names = "2 or 4 (3 or 5 with projections)" if kind == "lstm" else "2 or 4"
        raise ValueError(f"fastdl.{kind}: expected {names} weights per layer and direction ({num_layers} layers, "
                         f"{directions} directions), but got {len(weights)} weights")
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"fastdl.{kind}: expected dropout in [0, 1], but got {dropout}")
    per = len(weights) // (num_layers * directions)
    packed = batch_sizes is not None
    sizes = [] if not packed else (batch_sizes.tolist() if isinstance(batch_sizes, Tensor) else list(batch_sizes))
    if not packed and input.dim() != 3:
        raise ValueError(f"fastdl.{kind}: expected input of shape (T, N, I), but got {tuple(input.shape)}")
    if not packed and batch_first:
        input = input.transpose(0, 1)
    batch = sizes[0] if packed else input.shape[1]
    if hx is None:  # h0 as wide as weight_hh's columns (P with projections), c0 as the hidden size
        widths = (weights[1].shape[-1], weights[1].shape[0] // 4) if kind == "lstm" else (weights[1].shape[-1],)
        hx = tuple(input.new_zeros((num_layers * directions, batch, w)) for w in widths)
    finals = [[] for _ in hx]
    x = input
    for layer in range(num_layers):
        calls = []
        for direction in range(directions):
            k = layer * directions + direction
            calls.append((x, [state[k] for state in hx], _layer_weights(weights[k * per:(k + 1) * per]),
                          direction == 1))
        if directions == 2 and _concurrent_directions(x):
            in_order, reversed_ = (lambda call=call: _direction(kind, *call, sizes) for call in calls)
            done = _on_two_streams(in_order, reversed_, [x, *calls[1][1], *calls[1][2]])
        else:
            done = [_direction(kind, *call, sizes) for call in calls]
        outs = [out for out, _ in done]
        for _, results in done:
            for final, r in zip(finals, results):
                final.append(r)
        x = outs[0] if directions == 1 else torch.cat(outs, -1)
        if dropout > 0 and training and layer < num_layers - 1:
            x = F.dropout(x, dropout, training=True)
    if not packed and batch_first:
        x = x.transpose(0, 1)
    return x, tuple(torch.stack(final) for final in finals)


def _layer_weights(w):
    """One layer and direction's weights in torch's order -> [w_ih, w_hh, b_ih, b_hh, w_hr], absent ones None."""
    w = list(w)
    w_hr = w.pop() if len(w) in (3, 5) else None
    return w + [None] * (4 - len(w)) + [w_hr]


def _direction(kind, x, states, w, reverse, sizes):
    """One layer and direction: its output and final states."""
    if kind == "lstm":
        out, h, c, _, _, _ = ops_for(x).lstm_layer(x, *states, *w, sizes, reverse, False)
        return out, (h, c)
    out, h, _ = ops_for(x).gru_layer(x, *states, w[0], w[1], w[2], w[3], sizes, reverse, False)
    return out, (h,)


def _concurrent_directions(x: Tensor) -> bool:
    """Whether the two directions of a CUDA layer run on two streams: in eager mode, outside CUDA graph
    capture (torch.compile and graphs see one stream)."""
    return x.is_cuda and not torch.compiler.is_compiling() and not torch.cuda.is_current_stream_capturing()


_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}


def _on_two_streams(first, second, second_reads: list[Tensor | None]):
    """first() on the current stream and second() on a side stream, at the same time (a direction's
    per-step products and kernels are too small to fill the GPU alone); second_reads: the tensors
    second() reads, its input first (whose device the streams belong to). The side stream
    starts after the current one's queued work and the current one waits for it at the end; autograd
    runs second()'s backward on the side stream too. Tensors crossing streams are recorded on the
    stream that uses them, so the caching allocator does not hand their memory out early."""
    x = second_reads[0]
    device = x.device.index if x.device.index is not None else torch.cuda.current_device()
    main = torch.cuda.current_stream(device)
    side = _SIDE_STREAMS.get(device)
    if side is None:
        side = _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        for t in second_reads:  # input, states and weights: read on the side stream, forward and backward
            if t is not None:
                t.record_stream(side)
        out, results = second()
    done = first()
    main.wait_stream(side)
    for t in (out, *results):
        t.record_stream(main)
    return [done, (out, results)]


# ---- fake kernels ---------------------------------------------------------------------------------

def _rows(input, batch_sizes):
    return input.shape[0] if batch_sizes else input.shape[0] * input.shape[1]


def _out_shape(input, batch_sizes, hidden):
    return (input.shape[0], hidden) if batch_sizes else (input.shape[0], input.shape[1], hidden)


def _cell_dtype(input):
    return torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype


@torch.library.register_fake("fastdl::lstm_layer")
def _lstm_layer_fake(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, batch_sizes, reverse,
                     keep_workspace):
    hidden, state, rows = weight_ih.shape[0] // 4, weight_hh.shape[1], _rows(input, batch_sizes)
    out = input.new_empty(_out_shape(input, batch_sizes, state))
    gates = input.new_empty((rows, 4 * hidden) if keep_workspace else (0,))
    cells = input.new_empty((rows, hidden) if keep_workspace else (0,), dtype=_cell_dtype(input))
    before_projection = input.new_empty((rows, hidden) if keep_workspace and weight_hr is not None else (0,))
    return out, h0.new_empty(h0.shape), c0.new_empty(c0.shape), gates, cells, before_projection


@torch.library.register_fake("fastdl::lstm_layer_backward")
def _lstm_layer_backward_fake(grad_output, grad_hy, grad_cy, input, h0, c0, weight_ih, weight_hh, weight_hr, output,
                              gates, cells, hidden, batch_sizes, reverse, output_mask):
    def grad(like, wanted):
        return like.new_empty(like.shape) if wanted else input.new_empty((0,))
    bias = weight_ih.new_empty((weight_ih.shape[0],))
    return (grad(input, output_mask[0]), h0.new_empty(h0.shape), c0.new_empty(c0.shape),
            grad(weight_ih, output_mask[1]), grad(weight_hh, output_mask[1]),
            grad(weight_hr, output_mask[1] and weight_hr is not None), grad(bias, output_mask[2]),
            grad(bias, output_mask[2]))


@torch.library.register_fake("fastdl::gru_layer")
def _gru_layer_fake(input, h0, weight_ih, weight_hh, bias_ih, bias_hh, batch_sizes, reverse, keep_workspace):
    hidden, rows = weight_hh.shape[1], _rows(input, batch_sizes)
    out = input.new_empty(_out_shape(input, batch_sizes, hidden))
    saved = input.new_empty((rows, 4 * hidden) if keep_workspace else (0,))
    return out, h0.new_empty(h0.shape), saved


@torch.library.register_fake("fastdl::gru_layer_backward")
def _gru_layer_backward_fake(grad_output, grad_hy, input, h0, weight_ih, weight_hh, output, saved, batch_sizes,
                             reverse, output_mask):
    def grad(like, wanted):
        return like.new_empty(like.shape) if wanted else input.new_empty((0,))
    bias = weight_ih.new_empty((weight_ih.shape[0],))
    return (grad(input, output_mask[0]), h0.new_empty(h0.shape), grad(weight_ih, output_mask[1]),
            grad(weight_hh, output_mask[1]), grad(bias, output_mask[2]), grad(bias, output_mask[2]))
