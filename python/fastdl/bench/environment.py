"""What a recorded run states about where it ran: device, threads, torch, fastdl's build and commit,
date, and the ceilings measured at the start."""

from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path

import torch

import fastdl
from fastdl.bench import ceilings


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, check=True).stdout.strip()
        # Recorded results are not part of what was measured.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                ":(top,exclude)bench/results"], capture_output=True, text=True,
                               cwd=Path(__file__).parent).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(device: str, dtypes: list[torch.dtype], small_ceilings: bool) -> dict:
    env = {
        "device": device,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "fastdl": fastdl.build_info(),
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device == "cuda":
        env["sm_count"] = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    env.update(ceilings.measure(device, dtypes, small=small_ceilings))
    return env

