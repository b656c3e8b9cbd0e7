"""How ops allocate CPU outputs (csrc/common/outputs.h): an output of 16 MB or more is advised to be
backed by transparent huge pages (madvise MADV_HUGEPAGE, which the kernel records as the mapping's
`hg` flag in /proc/self/smaps) before a kernel writes it, unless FASTDL_HUGE_PAGE_OUTPUTS=never. Each
case runs in a fresh process, so that no earlier allocation decides where the output lands."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/sys/kernel/mm/transparent_hugepage/enabled").exists(),
                                reason="a Linux kernel with transparent huge pages (madvise, /proc/self/smaps)")

CHECK = r"""
import torch, fastdl

def advised_huge(t):
    address = (t.data_ptr() + (2 << 20) - 1) & ~((2 << 20) - 1)
    inside = False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            begin, end = (int(v, 16) for v in head.split("-"))
            inside = begin <= address < end
        elif inside and line.startswith("VmFlags:"):
            return "hg" in line.split()[1:]
    raise AssertionError("the output's address is in no mapping")

x = torch.randn(64, 8, 128, 128)  # 32 MB
y = torch.ops.fastdl.batch_norm(x, None, None, None, None, True, 0.1, 1e-5)[0]
assert y.nbytes >= 16 << 20
print(advised_huge(y), advised_huge(x))
"""


@pytest.mark.parametrize("mode", ["", "never"])
def test_large_outputs_are_advised_as_huge_pages(mode):
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root / "python"), FASTDL_HUGE_PAGE_OUTPUTS=mode)
    done = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    output, its_input = done.stdout.split()
    assert output == str(mode != "never")
    assert its_input == "False"  # torch's own allocation of the input: not advised
