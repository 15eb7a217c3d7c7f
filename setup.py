"""Install with `pip install --no-build-isolation .` after torch, so pip never fetches another torch.

Builds, when it can, the C++ CPU kernels `udd_fast._C` (skip with UDD_FAST_NO_CPP=1) and the CUDA
kernels `udd_fast._C_cuda` (when torch has CUDA and nvcc is found; skip with UDD_FAST_NO_CUDA=1).
Without them the package still works: udd_fast.ops falls back to torch and says so once.
The Triton kernels live in the top-level folder kernels/ and install as udd_fast.kernels.
"""
import os
import re
import shutil
from pathlib import Path

from setuptools import setup

version = re.search(r'__version__ = "([^"]+)"', Path("udd_fast/__init__.py").read_text()).group(1)


def _flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _extensions():
    """(ext_modules, cmdclass) for whatever can be built here."""
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # no torch at build time: pure-Python install
        return [], {}
    exts = []
    cxx = ["-O3"]  # the C++ standard is left to torch (its headers need a recent one)
    if not _flag("UDD_FAST_NO_CPP") and (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")):
        exts.append(CppExtension("udd_fast._C", ["csrc/ops_cpu.cpp"], extra_compile_args={"cxx": cxx + ["-fopenmp"]},
                                 extra_link_args=["-fopenmp"]))
    has_nvcc = CUDA_HOME is not None and Path(CUDA_HOME, "bin", "nvcc").exists()
    if not _flag("UDD_FAST_NO_CUDA") and torch.version.cuda is not None and has_nvcc:
        exts.append(CUDAExtension("udd_fast._C_cuda", ["csrc/ops_cuda.cu"],
                                  extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]}))
    if not exts:
        return [], {}
    # ninja when present (torch falls back to distutils otherwise).
    return exts, {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _extensions()

setup(
    name="udd_fast",
    version=version,
    description="Fast, checkable dataset distillation: IDC multi-formation gradient matching and UDD",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=["udd_fast", "udd_fast.kernels"],
    package_dir={"udd_fast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    python_requires=">=3.10",
    # torch unpinned on purpose: an installed build (CPU or the user's CUDA one) satisfies it.
    install_requires=["torch", "numpy>=2", "tqdm", "pillow", "scipy"],
    extras_require={"test": ["pytest", "pytest-benchmark", "hypothesis", "triton==3.6.0"]},
)
