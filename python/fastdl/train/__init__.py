"""The training command, `python -m fastdl.train MODEL ...` (see fastdl.train.command); main(argv)
runs it in-process and returns its summary."""

from fastdl.train.command import main

__all__ = ["main"]
