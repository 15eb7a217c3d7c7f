"""The backends of udd_fast.ops: loading them, reporting why one is missing, and choosing one.

Backends (env UDD_FAST_BACKEND, read at import, or `set_backend` / `use_backend`):
  auto    CUDA tensors: triton if importable, else the CUDA extension, else torch;
          CPU tensors: the C++ extension, else torch.
  triton  udd_fast.kernels (on CPU tensors only under TRITON_INTERPRET=1, Triton's interpreter)
  cuda    the extension udd_fast._C_cuda
  cpp     the extension udd_fast._C (float32/float64 on the CPU)
  torch   the references
An explicitly chosen backend that cannot run raises; a backend that fails to import is reported
once (a RuntimeWarning carrying the import error, and for an extension setup.py could not build,
the reason from its build report udd_fast/_build_report.json). `available_backends()` says what is
live. Every backend module has the same entry points (`<op>_forward`, `<op>_backward`), which the
op modules beside this one call.
"""
import contextlib
import importlib
import importlib.util
import json
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

BACKENDS = ("auto", "triton", "cuda", "cpp", "torch")
ENV_VAR = "UDD_FAST_BACKEND"
_REAL = ("torch", "cpp", "cuda", "triton")

_lock = threading.Lock()


@dataclass
class Record:
    """What is known of one backend's module: whether its import was tried, the module (None when the
    import failed), why it failed, and whether that failure was warned about (once)."""
    tried: bool = False
    module: object = None
    error: str = ""
    warned: bool = False


_records = {name: Record() for name in _REAL}  # tests swap in fresh ones (conftest.fresh_backends)


# -- loading ------------------------------------------------------------------------------------
def _import_kernels():
    """udd_fast.kernels: kernels/ of the source tree this udd_fast comes from (a checkout, run via
    PYTHONPATH or an editable install), registered under that name; else the installed subpackage
    (setup.py maps kernels/ there). The source tree goes first so that an editable install of
    another checkout cannot pair this package with that checkout's kernels."""
    name = "udd_fast.kernels"
    if name in sys.modules:
        return sys.modules[name]
    init = Path(__file__).resolve().parents[2] / "kernels" / "__init__.py"
    if not init.exists():
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    return mod


def _load(name):
    """The module behind a backend, or None (the import error is kept and warned about once)."""
    with _lock:
        rec = _records[name]
        if not rec.tried:
            rec.tried = True
            try:
                if name in _EXTENSIONS:
                    rec.module = importlib.import_module(_EXTENSIONS[name])
                elif name == "triton":
                    import triton  # noqa: F401  (a clear error when Triton itself is missing)
                    rec.module = _import_kernels()
                else:  # torch: no module of entry points (each op module runs its reference)
                    rec.module = sys.modules[__name__]
            except Exception as e:  # any import failure is reported, never hidden
                rec.module, rec.error = None, f"{type(e).__name__}: {e}"
                if name in _EXTENSIONS and _build_reason(name):
                    rec.error = f"{_EXTENSIONS[name]} was not built: {_build_reason(name)} ({rec.error})"
        if rec.module is None and not rec.warned:
            rec.warned = True
            warnings.warn(f"udd_fast.ops: backend {name!r} is unavailable ({rec.error}); "
                          f"'auto' falls back (see udd_fast.ops.available_backends())", RuntimeWarning, stacklevel=3)
        return rec.module


def load_error(name):
    """Why backend `name`'s module failed to import ('' when it imported or was not tried yet)."""
    return _records[name].error


_EXTENSIONS = {"cpp": "udd_fast._C", "cuda": "udd_fast._C_cuda"}
BUILD_REPORT = Path(__file__).resolve().parents[1] / "_build_report.json"  # written by setup.py's build


def _build_reason(name):
    """Why setup.py did not build backend `name`'s extension (from its build report), or None."""
    try:
        entry = json.loads(BUILD_REPORT.read_text()).get(_EXTENSIONS[name], {})
    except (OSError, ValueError):  # no report: built by other means, or not installed by setup.py
        return None
    return None if entry.get("built", True) else entry.get("reason", "unknown reason")


def _interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def why_unavailable(name, device=None):
    """None when backend `name` can run on `device` (None: on this machine's usual device), else why not."""
    if name == "torch":
        return None
    cuda = torch.cuda.is_available() if device is None else device.type == "cuda"
    if name == "cpp" and device is not None and device.type != "cpu":
        return f"the C++ backend runs on CPU tensors only, got {device}"
    if name == "cuda":
        if device is not None and device.type != "cuda":
            return f"the CUDA backend runs on CUDA tensors only, got {device}"
        if not torch.cuda.is_available():
            return "no CUDA device (torch.cuda.is_available() is False)"
    if name == "triton":
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed (pip install triton; a CUDA build of torch brings its own)"
        if not cuda and not _interpreting():
            return "Triton runs on CPU tensors only under TRITON_INTERPRET=1 (its interpreter)"
    if _load(name) is None:
        hint = " (build it: pip install --no-build-isolation -e .)" if name in ("cpp", "cuda") else ""
        return f"import failed: {load_error(name)}{hint}"
    return None


def available_backends(reasons=False):
    """{'torch': True, 'cpp': ..., 'cuda': ..., 'triton': ...}: which backends can run here (CUDA
    tensors when a GPU is present, else CPU tensors). With reasons=True, {name: (live, reason)}
    where reason is 'ok' or why not."""
    out = {}
    for name in _REAL:
        why = why_unavailable(name)
        out[name] = (why is None, why or "ok") if reasons else why is None
    return out


# -- selection ----------------------------------------------------------------------------------
def _parse(name):
    name = str(name).strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown udd_fast backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


_backend = _parse(os.environ.get(ENV_VAR, "auto") or "auto")


def get_backend():
    return _backend


def set_backend(name=None):
    """Select the backend for every op (None: re-read UDD_FAST_BACKEND). An explicit backend whose
    module cannot be imported raises here; one that cannot run on some tensor raises at that call."""
    global _backend
    name = _parse(os.environ.get(ENV_VAR, "auto") or "auto") if name is None else _parse(name)
    if name not in ("auto", "torch") and _load(name) is None:
        raise RuntimeError(f"udd_fast backend {name!r} is not available: {load_error(name)}")
    _backend = name
    return name


@contextlib.contextmanager
def use_backend(name):
    """with use_backend('cpp'): ... runs the ops on that backend, then restores the previous one."""
    global _backend
    old = _backend
    set_backend(name)
    try:
        yield name
    finally:
        _backend = old


def _dtype_ok(name, dtype):
    if name == "cpp":
        return dtype in (torch.float32, torch.float64)
    return dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def resolve(t: torch.Tensor) -> str:
    """The backend an op on tensor t runs on now."""
    if _backend == "auto":
        order = ("triton", "cuda") if t.is_cuda else ("cpp",)
        for name in order:
            if _dtype_ok(name, t.dtype) and why_unavailable(name, t.device) is None:
                return name
        return "torch"
    why = why_unavailable(_backend, t.device)
    if why is None and not _dtype_ok(_backend, t.dtype):
        why = f"dtype {t.dtype} is not supported"
    if why is not None:
        raise RuntimeError(f"udd_fast backend {_backend!r} was requested ({ENV_VAR} / set_backend) "
                           f"but cannot run on a {t.dtype} tensor on {t.device}: {why}")
    return _backend


# -- what every op module needs ------------------------------------------------------------------
def _check(ok: torch.Tensor, msg: str):
    """Raise on CPU; on CUDA an asynchronous device assert (no host sync in the hot path)."""
    if ok.is_cuda:
        torch._assert_async(ok, msg)
    elif not bool(ok):
        raise ValueError(msg)


def _needs_grad(*ts):
    """Whether autograd wants a graph through tensors ts: forward-only ops then run their reference."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


def _acc_dtype(dtype):
    """The dtype the kernels accumulate in: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
