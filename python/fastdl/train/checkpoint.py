"""Checkpoints that let a run continue exactly where it stopped.

A checkpoint holds the model's state_dict (the same keys for both backends: fastdl.convert keeps
them), the optimizer's and the AMP gradient scaler's state, the position (epoch, and batches done in
it), every process's random number generator states, and the command's arguments.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save(path: str | Path, **state) -> None:
    """Write `state` to a temporary file, then rename it: an interrupted save leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def load(path: str | Path) -> dict:
    # Our own files: arguments and RNG states are plain Python objects, not just tensors.
    return torch.load(path, map_location="cpu", weights_only=False)
