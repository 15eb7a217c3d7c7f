"""csrc/*_cuda.cu compile with nvcc for Hopper (sm_90) and Ampere (sm_80) on this machine, GPU or not
(bench/compile_report.py): every kernel for every dtype, without register spills. The default
compiles the kernels alone (-DUDD_FAST_KERNELS_ONLY, torch's flags and headers, about 30 s); every
file of the extension with torch's bindings takes minutes and is marked slow. The cfc_loss
shared-memory bound at any K is a static_assert in its file, so compiling it checks it."""
import importlib.util
import re

import pytest

from helpers import REPO

pytestmark = pytest.mark.integration  # every test here starts processes

_spec = importlib.util.spec_from_file_location("compile_report", REPO / "bench" / "compile_report.py")
compile_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compile_report)

ARCHS = {"sm_80", "sm_90"}
DTYPES = {"float, float", "double, double", "c10::Half, float", "c10::BFloat16, float"}


def _kernels_in_source():
    return {name for path in compile_report.cuda_sources() for name in
            re.findall(r"__global__ void (\w+)\(", path.read_text())}


def _compile(full_tu):
    if compile_report.nvcc_path() is None:
        pytest.skip("nvcc not found (CUDA_HOME, CUDA_PATH or PATH): the CUDA kernels cannot be compiled here")
    return compile_report.compile_cuda(full_tu=full_tu, log=lambda *_: None)


def _check(out):
    assert out["ok"], f"nvcc failed: {out['cmd']}\n{out['error']}"
    names = _kernels_in_source()
    assert len(names) >= 9, names
    got = {(k["kernel"], k["arch"]) for k in out["kernels"]}
    want = {(f"{n}<{d}>", a) for n in names for d in DTYPES for a in ARCHS}
    assert want <= got, f"kernels not compiled: {sorted(want - got)}"
    spills = [k for k in out["kernels"] if k.get("spill_stores") or k.get("spill_loads")]
    assert not spills, f"register spills: {spills}"
    assert all(k.get("regs") for k in out["kernels"]), "ptxas -v reported no register count"


def test_cuda_kernels_compile_for_sm80_and_sm90():
    _check(_compile(full_tu=False))


@pytest.mark.slow
def test_cuda_extension_translation_unit_compiles_for_sm80_and_sm90():
    """Every file with torch's bindings: the entry points' checks, dispatch and launches."""
    _check(_compile(full_tu=True))
