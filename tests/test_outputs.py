"""How ops allocate CPU outputs (csrc/common/outputs.h): an output of 16 MB or more is advised to be
backed by transparent huge pages (madvise MADV_HUGEPAGE, which the kernel records as the mapping's
`hg` flag in /proc/self/smaps) before a kernel writes it, unless FASTDL_HUGE_PAGE_OUTPUTS=never; so is
the LSTM/GRU layers' input projection, a workspace freed before the call returns, seen here by the
page faults of a call. Each case runs in a fresh process, so that no earlier allocation decides where
memory lands."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
pytestmark = pytest.mark.skipif(not THP_MODE.exists(),
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


FAULTS = r"""
import resource, torch, fastdl
gru = fastdl.nn.GRU(256, 512).eval()
x = torch.randn(200, 64, 256)  # the input projection: 200 x 64 x 1536 values, 78 MB
with torch.no_grad():
    gru(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    gru(x)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults_of_a_gru_call(mode):
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root / "python"), FASTDL_HUGE_PAGE_OUTPUTS=mode, OMP_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@pytest.mark.skipif(not THP_MODE.exists() or "[madvise]" not in THP_MODE.read_text(),
                    reason="transparent huge pages in madvise mode (with [always] every large mapping gets "
                           "them, advised or not; with [never] none does)")
def test_rnn_input_projection_is_advised_as_huge_pages():
    # In 4 KB pages the projection alone faults about 19,000 times (measured: 26,000 faults a call
    # without advice, 1,900 with it, 20,000 with only the output advised).
    advised, plain = page_faults_of_a_gru_call(""), page_faults_of_a_gru_call("never")
    assert advised * 4 < plain, (advised, plain)
