"""A progress bar for the runner. On a terminal it stays on the last line, under the printed lines,
with the case being measured, elapsed time and an estimate of what is left; in a log (not a
terminal) only the printed lines appear."""

from __future__ import annotations

import shutil
import sys
import time


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


class Progress:
    def __init__(self, total: int, stream=sys.stdout, width: int = 30):
        self.total, self.done, self.stream, self.width = total, 0, stream, width
        self.terminal = stream.isatty()
        self.begin = time.perf_counter()
        self.current = ""

    def print(self, text: str) -> None:
        """A line of output above the bar."""
        if self.terminal:
            self.stream.write("\r\033[K")
        print(text, file=self.stream, flush=True)
        self._draw()

    def start(self, label: str) -> None:
        self.current = label
        self._draw()

    def finish(self, text: str) -> None:
        """The current case is done: print its line, advance the bar."""
        self.done += 1
        self.current = ""
        self.print(text)

    def close(self) -> None:
        if self.terminal:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def _draw(self) -> None:
        if not self.terminal:
            return
        elapsed = time.perf_counter() - self.begin
        filled = self.width * self.done // max(self.total, 1)
        left = f", ~{_clock(elapsed / self.done * (self.total - self.done))} left" if self.done else ""
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {_clock(elapsed)}{left}"
        columns = shutil.get_terminal_size().columns
        self.stream.write("\r\033[K" + f"{line}  {self.current}"[:columns - 1])
        self.stream.flush()
