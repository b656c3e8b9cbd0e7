"""The instruction mix of each kernel's main loop, read from its SASS: no GPU needed.

    python bench/sass_loop_mix.py OBJECT [--match implicit_gemm] [--top 8]

OBJECT is a compiled CUDA object or the built extension (e.g. build/temp/csrc/cuda/conv2d_kernels.o,
or one compiled alone: nvcc -std=c++17 -O3 -arch=sm_90 -I csrc -c csrc/cuda/conv2d_kernels.cu).
For every function whose mangled name contains --match, the loop (a backward branch and the code it
jumps over) with the most math instructions (FFMA, DFMA, HMMA) is taken as the main loop; printed:
its length, its math instructions and their share, and the most frequent opcodes. Static counts: an
instruction-bound loop runs at most at (math share) of the math pipe's rate (bench/NOTES.md,
Convolution, CUDA 5).
"""

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys

MATH = ("FFMA", "DFMA", "HMMA")
INSTRUCTION = re.compile(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
BRANCH = re.compile(r"BRA\s+0x([0-9a-f]+)")


def cuobjdump():
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:  # triton ships one with torch's CUDA wheels
        import triton

        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    sys.exit("sass_loop_mix: cuobjdump not found (CUDA toolkit, or triton's copy)")


def opcode(text):
    """The opcode without predicate and modifiers: '@!P0 LDG.E.CONSTANT R1, ...' -> 'LDG'."""
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]


def functions(sass):
    name, body = None, []
    for line in sass.splitlines():
        if "Function :" in line:
            if name:
                yield name, body
            name, body = line.split("Function :")[1].strip(), []
        elif name:
            m = INSTRUCTION.match(line)
            if m:
                body.append((int(m.group(1), 16), m.group(2)))
    if name:
        yield name, body


def main_loop(body):
    """The instructions of the loop with the most math instructions, or None."""
    best = None
    for address, text in body:
        m = BRANCH.search(text)
        if not m or int(m.group(1), 16) >= address:
            continue
        start = int(m.group(1), 16)
        loop = [t for a, t in body if start <= a <= address]
        math = sum(opcode(t) in MATH for t in loop)
        if math and (best is None or math > best[0]):
            best = (math, loop)
    return best[1] if best else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("object")
    parser.add_argument("--match", default="implicit_gemm", help="substring of the mangled kernel names")
    parser.add_argument("--top", type=int, default=8, help="opcodes listed per loop")
    args = parser.parse_args()
    sass = subprocess.run([cuobjdump(), "-sass", args.object], check=True, capture_output=True, text=True).stdout
    for name, body in functions(sass):
        if args.match not in name:
            continue
        loop = main_loop(body)
        if loop is None:
            continue
        counts = collections.Counter(opcode(t) for t in loop)
        math = sum(counts[m] for m in MATH)
        mix = ", ".join(f"{op} {n}" for op, n in counts.most_common(args.top))
        print(f"{name}\n    loop {len(loop)} instructions, math {math} ({100 * math / len(loop):.0f}%): {mix}")


if __name__ == "__main__":
    main()
