"""Install with `pip install --no-build-isolation .` after torch, so pip never fetches another torch.
The project's metadata and extras are in pyproject.toml; this script finds the packages and builds the
extensions.

Builds, when it can, the C++ CPU kernels `udd_fast._C` (skip with UDD_FAST_NO_CPP=1) and the CUDA
kernels `udd_fast._C_cuda` (when torch has CUDA and nvcc is found; skip with UDD_FAST_NO_CUDA=1;
sm_80, sm_90 and PTX unless TORCH_CUDA_ARCH_LIST says otherwise). Both are optional: an extension
that fails to compile (no compiler, nvcc and torch of different CUDA majors, a host compiler nvcc
does not accept, ...) is reported with the reason and skipped, and the rest installs.
udd_fast/_build_report.json records what was built and why not; udd_fast.ops falls back to torch
and says why (`udd_fast.ops.available_backends(reasons=True)`).
The Triton kernels live in the top-level folder kernels/ and install as udd_fast.kernels.
The packages are found, not listed, so that no subpackage can be left out of a wheel.
"""
import json
import os
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup

REPORT = "_build_report.json"  # in the installed udd_fast package; read by udd_fast.ops
# csrc/: one file per op and device, and each extension's bindings.
OPS = ("crop_resize", "diff_augment", "response_map", "region_mask", "cfc_loss")
CPU_SOURCES = [f"csrc/{op}_cpu.cpp" for op in OPS] + ["csrc/bindings_cpu.cpp"]
CUDA_SOURCES = [f"csrc/{op}_cuda.cu" for op in OPS] + ["csrc/bindings_cuda.cpp"]
# Ampere and Hopper machine code, plus Hopper PTX that newer GPUs compile at load time.
DEFAULT_GENCODE = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
                   "-gencode=arch=compute_90,code=compute_90"]


def _flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _optional_build_ext(base, skipped):
    """base (torch's BuildExtension) building each extension on its own: a failure is printed with its
    reason and the extension left out; `skipped` holds the ones not even tried, with why."""

    class OptionalBuildExt(base):
        def build_extensions(self):
            exts, built = self.extensions, []
            # torch's build_extensions wraps the compiler's methods: start each extension from the originals
            saved = {k: getattr(self.compiler, k) for k in ("compile", "_compile", "src_extensions")
                     if hasattr(self.compiler, k)}
            for ext in exts:
                self.extensions = [ext]
                for k, v in saved.items():
                    setattr(self.compiler, k, list(v) if isinstance(v, list) else v)
                try:
                    super().build_extensions()
                except Exception as e:  # any compile or configuration failure: warn, go on without it
                    why = f"the build failed: {type(e).__name__}: {str(e).strip()[:500]}"
                    self.report[ext.name] = {"built": False, "reason": why}
                    print(f"WARNING: udd_fast: extension {ext.name} not built ({why}); installing without it, "
                          "udd_fast.ops uses its other backends", file=sys.stderr)
                else:
                    self.report[ext.name] = {"built": True, "reason": "ok"}
                    built.append(ext)
            self.extensions = built  # the ones whose files exist (copied in place, listed as outputs)

        def run(self):
            self.report = {name: {"built": False, "reason": why} for name, why in skipped.items()}
            for name, why in skipped.items():
                print(f"udd_fast: extension {name} skipped: {why}", file=sys.stderr)
            super().run()
            text = json.dumps(self.report, indent=1)
            out = Path(self.build_lib, "udd_fast")
            out.mkdir(parents=True, exist_ok=True)
            (out / REPORT).write_text(text)
            if self.inplace:  # editable installs and build_ext --inplace import from the source tree
                Path("udd_fast", REPORT).write_text(text)

    return OptionalBuildExt


def _extensions():
    """(ext_modules, cmdclass) for whatever can be tried here."""
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # no torch at build time: pure-Python install
        return [], {}
    exts, skipped = [], {}
    cxx = ["-O3"]  # the C++ standard is left to torch (its headers need a recent one)
    if _flag("UDD_FAST_NO_CPP"):
        skipped["udd_fast._C"] = "UDD_FAST_NO_CPP is set"
    else:
        # always tried (a missing compiler is one more reason the build reports), so the report exists
        exts.append(CppExtension("udd_fast._C", CPU_SOURCES, extra_compile_args={"cxx": cxx + ["-fopenmp"]},
                                 extra_link_args=["-fopenmp"]))
    nvcc = CUDA_HOME is not None and Path(CUDA_HOME, "bin", "nvcc").exists()
    if _flag("UDD_FAST_NO_CUDA"):
        skipped["udd_fast._C_cuda"] = "UDD_FAST_NO_CUDA is set"
    elif torch.version.cuda is None:
        skipped["udd_fast._C_cuda"] = f"torch {torch.__version__} has no CUDA (torch.version.cuda is None)"
    elif not nvcc:
        skipped["udd_fast._C_cuda"] = "nvcc not found (set CUDA_HOME)"
    else:
        nvcc_flags = ["-O3", "-lineinfo"]  # -lineinfo: source lines in Nsight Compute and compute-sanitizer
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            nvcc_flags += DEFAULT_GENCODE  # else torch asks the visible GPU, and fails without one
        try:
            exts.append(CUDAExtension("udd_fast._C_cuda", CUDA_SOURCES,
                                      extra_compile_args={"cxx": cxx, "nvcc": nvcc_flags}))
        except Exception as e:  # torch refusing the CUDA setup (paths, versions)
            skipped["udd_fast._C_cuda"] = f"torch's CUDA setup failed: {type(e).__name__}: {e}"
    if not exts:  # nothing to compile: write the report here, with the package's sources
        Path("udd_fast", REPORT).write_text(json.dumps(
            {name: {"built": False, "reason": why} for name, why in skipped.items()}, indent=1))
        return [], {}
    # ninja when present (torch falls back to distutils otherwise).
    base = BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)
    return exts, {"build_ext": _optional_build_ext(base, skipped)}


ext_modules, cmdclass = _extensions()

# udd_fast and its subpackages, and the top-level kernels/ (with any subpackage) as udd_fast.kernels
PACKAGES = find_packages(include=["udd_fast", "udd_fast.*"]) + \
    ["udd_fast.kernels"] + [f"udd_fast.kernels.{p}" for p in find_packages("kernels")]

setup(
    packages=PACKAGES,
    package_dir={"udd_fast.kernels": "kernels"},
    package_data={"udd_fast": [REPORT]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
