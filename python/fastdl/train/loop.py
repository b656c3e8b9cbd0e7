"""Training steps and evaluation, the same for both backends and every kind of model.

Every model maps inputs to logits whose last dimension is the class (N,classes for a classifier,
N,T,classes for a language model or a tagger); the loss is the mean cross-entropy over all targets.
With amp, the forward runs under torch.autocast (bfloat16 on the CPU, float16 on CUDA, where a
GradScaler keeps small float16 gradients from flushing to zero).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdl.train.progress import Progress

def batches(inputs: Tensor, targets: Tensor, indices: Sequence[int], batch_size: int,
            device: torch.device, skip: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """(inputs, targets) of consecutive batches of `indices`, after the first `skip` batches."""
    for start in range(skip * batch_size, len(indices), batch_size):
        chosen = torch.as_tensor(indices[start : start + batch_size])
        yield inputs[chosen].to(device, non_blocking=True), targets[chosen].to(device, non_blocking=True)


def autocast(device: torch.device, amp: bool) -> torch.autocast:
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=amp)


def loss_and_correct(model: nn.Module, inputs: Tensor, targets: Tensor, amp: bool) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy over all targets, and the number of correct predictions (tensors, so
    that a step on the GPU waits for nothing)."""
    with autocast(inputs.device, amp):
        logits = model(inputs)
    logits, targets = logits.float().flatten(0, -2), targets.flatten()
    return F.cross_entropy(logits, targets), (logits.argmax(1) == targets).sum()


def train(model: nn.Module, data: Iterable[tuple[Tensor, Tensor]], optimizer: torch.optim.Optimizer,
          scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler, amp: bool,
          progress: Progress) -> list[Tensor]:
    """One optimizer step (and learning-rate step) per batch of `data`; returns each step's loss."""
    model.train()
    losses = []
    for inputs, targets in data:
        loss, correct = loss_and_correct(model, inputs, targets, amp)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        losses.append(loss.detach())
        progress.update(len(inputs), losses[-1] * targets.numel(), correct, targets.numel())
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable[tuple[Tensor, Tensor]], amp: bool) -> tuple[float, float]:
    """Mean loss per target and accuracy over `data`."""
    model.eval()
    loss_sum, correct, counted = 0.0, 0, 0
    for inputs, targets in data:
        loss, batch_correct = loss_and_correct(model, inputs, targets, amp)
        loss_sum += float(loss) * targets.numel()
        correct += int(batch_correct)
        counted += targets.numel()
    return loss_sum / max(counted, 1), correct / max(counted, 1)
