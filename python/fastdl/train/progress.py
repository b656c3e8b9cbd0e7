"""A one-line progress bar for an epoch: running loss, accuracy and samples per second.

On a terminal the line is redrawn in place a few times a second; elsewhere (logs, CI) only the
epoch's final line is written.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from torch import Tensor

BAR_WIDTH = 24
REDRAW_SECONDS = 0.2


class Progress:
    def __init__(self, title: str, total_batches: int, stream: TextIO | None = sys.stderr):
        self.title, self.total, self.stream = title, total_batches, stream
        self.batches = self.samples = self.targets = 0
        self.loss_sum = self.correct = 0
        self.start = self.drawn = time.perf_counter()

    def update(self, samples: int, loss_sum: Tensor, correct: Tensor, targets: int) -> None:
        """One batch: its samples, and its summed loss and correct predictions over `targets` targets
        (tensors, read only when the line is drawn)."""
        self.batches += 1
        self.samples += samples
        self.loss_sum += loss_sum
        self.correct += correct
        self.targets += targets
        now = time.perf_counter()
        if self.stream is not None and self.stream.isatty() and now - self.drawn >= REDRAW_SECONDS:
            self.drawn = now
            self.stream.write("\r" + self.line())
            self.stream.flush()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.write(("\r" if self.stream.isatty() else "") + self.line() + "\n")
            self.stream.flush()

    @property
    def loss(self) -> float:
        return float(self.loss_sum) / max(self.targets, 1)

    @property
    def accuracy(self) -> float:
        return int(self.correct) / max(self.targets, 1)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def line(self) -> str:
        done = self.batches / max(self.total, 1)
        bar = "#" * round(BAR_WIDTH * done) + "-" * (BAR_WIDTH - round(BAR_WIDTH * done))
        rate = self.samples / max(self.seconds, 1e-9)
        return (f"{self.title} [{bar}] {self.batches}/{self.total}  loss {self.loss:.4f}  "
                f"acc {100 * self.accuracy:.2f}%  {rate:,.0f} samples/s")
