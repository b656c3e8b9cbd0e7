"""What every benchmark case is (Case) and the helpers the families share: the runner
(python -m fastdl.bench), the pytest-benchmark suites in bench/ and the families' modules (cases.py,
rnn_cases.py, model_cases.py) build on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


Step = Callable[[], object]


def true_float32() -> None:
    """float32 means float32 on both sides: torch's cuDNN convolutions and RNNs (and cuBLAS) would
    otherwise round their operands to TF32. Called by the runner and the pytest-benchmark suites before
    any case; only the convolution baselines named "cuDNN TF32" turn it back on, inside their step."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def with_cudnn_tf32(step: Step) -> Step:
    """`step` run with cuDNN's TF32 on (true_float32 turns it off for everything else), backward included."""
    def run():
        saved = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = True
        try:
            return step()
        finally:
            torch.backends.cudnn.allow_tf32 = saved
    return run


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def element_size(dtype: torch.dtype) -> int:
    return torch.tensor([], dtype=dtype).element_size()


@dataclass
class Case:
    """One measurement: a layer of a network at a batch size, dtype, device and mode."""

    family: str
    network: str
    layer: str
    op: str  # what the layer computes, for the report
    batch: int
    shape: tuple[int, ...]  # the input's shape
    dtype: torch.dtype
    device: str
    mode: str
    exact: bool = False  # whether fastdl must equal torch exactly (else within 1e-4 of the largest value)
    baseline: str = "torch"  # what torch runs, where it has a choice (cuDNN with or without TF32)

    @property
    def id(self) -> str:
        dt = dtype_name(self.dtype)
        suffix = "" if self.baseline == "torch" else f"/{self.baseline}"
        return f"{self.network}/{self.layer}/b{self.batch}/{dt}/{self.mode}{suffix}"

    def random(self, shape, seed: int) -> torch.Tensor:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        return torch.randn(shape, generator=gen).to(self.device, self.dtype)

    def reference_step(self, inputs: dict) -> Step:
        """What `measure.check` compares fastdl's result with: torch's step, unless a family says otherwise."""
        return self.make_step("torch", inputs)

    def make_inputs(self) -> dict:
        raise NotImplementedError

    def make_step(self, impl: str, inputs: dict) -> Step:
        raise NotImplementedError

    def bytes_moved(self) -> int:
        raise NotImplementedError

    def flops(self) -> int | None:
        """Floating-point operations of a step, for compute-bound families (None: report bandwidth)."""
        return None

    def axes(self) -> dict[str, int]:
        """The sizes that the report plots time against."""
        return {"batch": self.batch}
