"""The LSTM/GRU benchmark cases (the `rnn` family of fastdl.bench and bench/bench_rnn.py): whole
layers as in the issue's grid, input 256, hidden 256 and 512, 1 and 2 layers, uni- and
bidirectional, sequences of 50 and 200 steps, batch 1, 8, 64 (and 256 on the GPU); an inference
step (eval, no autograd) and a training step (forward, then the gradients of the input and every
weight). fastdl.nn and torch.nn modules share their weights; dropout is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import fastdl
from fastdl.bench.case import Case, Step

RNN_INPUT = 256
RNN_HIDDEN = (256, 512)
RNN_LAYERS = (1, 2)
RNN_SEQ = (50, 200)
RNN_BATCHES = {"cpu": (1, 8, 64), "cuda": (1, 8, 64, 256)}
RNN_MODES = ("inference", "training step")


@dataclass
class RnnCase(Case):
    hidden: int = 256
    layers: int = 1
    bidirectional: bool = False

    def _modules(self):
        kind = self.network  # "LSTM" or "GRU"
        args = dict(input_size=self.shape[2], hidden_size=self.hidden, num_layers=self.layers,
                    bidirectional=self.bidirectional)
        torch.manual_seed(0)
        ref = getattr(torch.nn, kind)(**args).to(self.device, self.dtype)
        ours = getattr(fastdl.nn, kind)(**args).to(self.device, self.dtype)
        ours.load_state_dict(ref.state_dict())
        return {"torch": ref, "fastdl": ours}

    def make_inputs(self) -> dict:
        inputs = {"x": self.random(self.shape, 0), "modules": self._modules()}
        if self.mode == "training step":
            inputs["x"].requires_grad_()
            directions = 2 if self.bidirectional else 1
            inputs["grad"] = self.random((*self.shape[:2], directions * self.hidden), 1)
        else:
            for m in inputs["modules"].values():
                m.eval()
        return inputs

    def make_step(self, impl: str, inputs: dict) -> Step:
        module, x = inputs["modules"][impl], inputs["x"]
        if self.mode == "inference":
            def step():
                with torch.no_grad():
                    return module(x)[0]
            return step
        wants, grad = [x, *module.parameters()], inputs["grad"]
        return lambda: torch.autograd.grad(module(x)[0], wants, grad)

    def axes(self) -> dict[str, int]:
        return {"batch": self.batch, "sequence length": self.shape[0]}

    def flops(self) -> int:
        """2 x multiply-adds of the gates' matrix products (input and recurrent weights, every layer
        and direction); a training step adds the input and weight gradients (twice the forward's)."""
        T, N, I = self.shape
        gates = 4 if self.network == "LSTM" else 3
        directions = 2 if self.bidirectional else 1
        macs = 0
        for layer in range(self.layers):
            width = I if layer == 0 else directions * self.hidden
            macs += directions * T * N * gates * self.hidden * (width + self.hidden)
        return 2 * macs * (1 if self.mode == "inference" else 3)


def rnn_cases(device: str, dtype: torch.dtype, batches=None, quick: bool = False) -> list[Case]:
    out = []
    for kind in ("LSTM", "GRU"):
        for hidden in RNN_HIDDEN[:1] if quick else RNN_HIDDEN:
            for layers in RNN_LAYERS[:1] if quick else RNN_LAYERS:
                for bidir in (False, True):  # quick too: CUDA runs the two directions concurrently
                    for T in RNN_SEQ[:1] if quick else RNN_SEQ:
                        for b in batches or ((8, 64) if quick else RNN_BATCHES[device]):
                            for mode in RNN_MODES:
                                layer = f"h{hidden} L{layers} {'bi' if bidir else 'uni'} T{T}"
                                out.append(RnnCase("rnn", kind, layer, f"{kind} {layer} on input {RNN_INPUT}", b,
                                                   (T, b, RNN_INPUT), dtype, device, mode, hidden=hidden,
                                                   layers=layers, bidirectional=bidir))
    return out
