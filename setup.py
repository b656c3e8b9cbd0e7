"""Builds fastdl._C, the one extension that holds every fastdl kernel.

Install with `pip install --no-build-isolation -e .` (an isolated build would pull another torch);
rebuild incrementally with `python setup.py build_ext --inplace`.

Decisions, each printed and each overridable from the environment:
  FASTDL_CUDA=0/1             CUDA kernels: default on when torch was built with CUDA and nvcc exists
                              (never decided by torch.cuda.is_available(): CI compiles without a GPU)
  TORCH_CUDA_ARCH_LIST        GPU architectures, default 9.0 (H100/H200)
  FASTDL_CPU_CAPABILITY       CPU vectors: auto (AVX2 when this machine has it), avx2, avx512, default
"""

import os
import shutil
import sys
from pathlib import Path

import torch
from setuptools import find_packages, setup


def cuda_toolkit_root():
    """The CUDA toolkit's root (bin/nvcc, include/cuda_runtime.h), or None. torch guesses it from
    where `nvcc` is on PATH, which is wrong when that is a wrapper script (/usr/local/bin/nvcc here);
    it must be known before torch.utils.cpp_extension is imported, which reads CUDA_HOME once."""
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    candidates += [str(Path(nvcc).resolve().parent.parent)] if nvcc else []
    candidates += ["/usr/local/cuda"]
    for root in filter(None, candidates):
        if (Path(root) / "bin" / "nvcc").exists() and (Path(root) / "include" / "cuda_runtime.h").exists():
            return root
    return None


if cuda_toolkit_root():
    os.environ["CUDA_HOME"] = cuda_toolkit_root()

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"

CPU_FLAGS = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
}


def cuda_decision():
    """(build CUDA?, why)."""
    flag = os.environ.get("FASTDL_CUDA", "").strip()
    if flag == "0":
        return False, "FASTDL_CUDA=0"
    root = cuda_toolkit_root()
    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} was built without CUDA"
    elif not root:
        reason = "no CUDA toolkit found (CUDA_HOME, nvcc on PATH, /usr/local/cuda)"
    else:
        return True, f"torch {torch.__version__} has CUDA {torch.version.cuda}, toolkit at {root}"
    if flag == "1":
        sys.exit(f"fastdl: FASTDL_CUDA=1 but {reason}")
    return False, reason


def cpu_capability():
    want = os.environ.get("FASTDL_CPU_CAPABILITY", "auto").strip().upper()
    if want == "AUTO":
        # AVX-512 stays opt-in: the kernels are tuned and tested on AVX2 machines.
        return "AVX2" if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") else "DEFAULT"
    if want not in CPU_FLAGS:
        sys.exit(f"fastdl: FASTDL_CPU_CAPABILITY must be auto, default, avx2 or avx512, not {want!r}")
    return want


def nvidia_include_flags():
    """CUDA library headers (cusparse.h, cublas_v2.h...) that torch's CUDA headers may need come with
    torch's nvidia wheels, not with the system toolkit. They are searched after the toolkit's own
    headers (-idirafter): the wheels' copy of cuda_runtime.h is incomplete and must not shadow it."""
    site = Path(torch.__file__).resolve().parent.parent
    return [f"-idirafter{p}" for p in [site / "nvidia" / "cu13" / "include"] if p.is_dir()]


def shared_cxx_runtime():
    """Link flags that make the extension use the process's shared C++ runtime (libstdc++.so.6), named
    before the compiler driver's own libraries. A driver that links libstdc++ statically (the GPU
    machine's /opt/gcc/bin/g++ wrapper does) otherwise copies parts of it into the extension: a second
    runtime whose locale was never initialized, so every error message with a number in it crashed
    the process (bench/NOTES.md, GPU 1)."""
    if not sys.platform.startswith("linux"):
        return []
    return ["-Wl,--no-as-needed", "-l:libstdc++.so.6", "-Wl,--as-needed"]


def extension():
    with_cuda, why = cuda_decision()
    cap = cpu_capability()
    # at::parallel_for is an inline `#pragma omp parallel`: without -fopenmp it runs serially. The
    # link resolves to torch's own libgomp.so.1 (same soname, already loaded), sharing its threads.
    cxx = ["-O3", "-g0", "-fopenmp", "-Wno-unknown-pragmas", f"-DCPU_CAPABILITY={cap}", f"-DCPU_CAPABILITY_{cap}",
           *CPU_FLAGS[cap]]
    link = ["-fopenmp", *shared_cxx_runtime()]
    sources = [CSRC / "ops.cpp", CSRC / "python_module.cpp", *sorted((CSRC / "autograd").glob("*.cpp")),
               *sorted((CSRC / "cpu").glob("*.cpp"))]
    include_dirs = [str(CSRC)]
    sources = [str(src.relative_to(ROOT)) for src in sources]  # setuptools wants relative paths
    print(f"fastdl: CUDA kernels {'on' if with_cuda else 'off'} ({why})")
    print(f"fastdl: CPU kernels use {cap} vectors")
    if not with_cuda:
        return CppExtension(
            "fastdl._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx + ["-DFASTDL_WITH_CUDA=0"]},
            extra_link_args=link,
        )
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    print(f"fastdl: TORCH_CUDA_ARCH_LIST={archs}")
    arch_token = "_".join(archs.replace(";", " ").split())
    sources += [str(src.relative_to(ROOT)) for src in sorted((CSRC / "cuda").glob("*.cpp")) + sorted((CSRC / "cuda").glob("*.cu"))]
    return CUDAExtension(
        "fastdl._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args={
            "cxx": cxx + nvidia_include_flags() + ["-DFASTDL_WITH_CUDA=1", f"-DFASTDL_CUDA_ARCHS={arch_token}"],
            "nvcc": ["-O3", "-DFASTDL_WITH_CUDA=1", "-lineinfo", "--expt-relaxed-constexpr"],
        },
        extra_link_args=link,
    )


class Build(BuildExtension):
    """One object folder for every way of building (pip install -e, build_ext --inplace), so that
    ninja reuses objects across them instead of recompiling in a fresh temporary folder."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = str(ROOT / "build" / "temp")


setup(
    name="fastdl",
    packages=find_packages("python"),
    package_dir={"": "python"},
    ext_modules=[extension()],
    cmdclass={"build_ext": Build},
)
