"""The hot paths behind one API. The engine calls only these functions; each has a plain-PyTorch
reference (`*_ref`) that every faster backend is tested against.

Backends (env UDD_FAST_BACKEND, read at import, or `set_backend` / `use_backend`):
  auto    CUDA tensors: triton if importable, else the CUDA extension, else torch;
          CPU tensors: the C++ extension, else torch.
  triton  udd_fast.kernels (on CPU tensors only under TRITON_INTERPRET=1, Triton's interpreter)
  cuda    the extension udd_fast._C_cuda
  cpp     the extension udd_fast._C (float32/float64 on the CPU)
  torch   the references
An explicitly chosen backend that cannot run raises; a backend that fails to import is reported
once (a RuntimeWarning carrying the import error). `available_backends()` says what is live.
"""
import contextlib
import importlib
import importlib.util
import os
import sys
import threading
import warnings
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

from .augment import NUM_PARAMS, Strategy, cutout_size, diff_augment_ref
from .decode import crop_resize_ref

BACKENDS = ("auto", "triton", "cuda", "cpp", "torch")
ENV_VAR = "UDD_FAST_BACKEND"
_OP_CODES = {"crop": 0, "scale": 1, "rotate": 2}
_REAL = ("torch", "cpp", "cuda", "triton")

_lock = threading.Lock()
_modules = {}  # backend -> loaded module, or None when it failed to import
_errors = {}  # backend -> why it failed to import
_warned = set()


# -- loading ------------------------------------------------------------------------------------
def _import_kernels():
    """udd_fast.kernels: installed (setup.py maps kernels/ there), or else kernels/ of the source
    tree (PYTHONPATH-based runs), registered under the same name."""
    name = "udd_fast.kernels"
    if name in sys.modules:
        return sys.modules[name]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
    init = Path(__file__).resolve().parent.parent / "kernels" / "__init__.py"
    if not init.exists():
        raise ModuleNotFoundError(f"udd_fast.kernels is not installed and {init} does not exist", name=name)
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
        if name not in _modules:
            try:
                if name == "cpp":
                    _modules[name] = importlib.import_module("udd_fast._C")
                elif name == "cuda":
                    _modules[name] = importlib.import_module("udd_fast._C_cuda")
                elif name == "triton":
                    import triton  # noqa: F401  (a clear error when Triton itself is missing)
                    _modules[name] = _import_kernels()
                else:
                    _modules[name] = sys.modules[__name__]
            except Exception as e:  # any import failure is reported, never hidden
                _modules[name] = None
                _errors[name] = f"{type(e).__name__}: {e}"
        mod = _modules[name]
        if mod is None and name not in _warned:
            _warned.add(name)
            warnings.warn(f"udd_fast.ops: backend {name!r} is unavailable ({_errors[name]}); "
                          f"'auto' falls back (see udd_fast.ops.available_backends())", RuntimeWarning, stacklevel=3)
    return mod


def _interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _why_not(name, device=None):
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
    if name == "triton" and not cuda and not _interpreting():
        return "Triton runs on CPU tensors only under TRITON_INTERPRET=1 (its interpreter)"
    if _load(name) is None:
        hint = " (build it: pip install --no-build-isolation -e .)" if name in ("cpp", "cuda") else ""
        return f"import failed: {_errors[name]}{hint}"
    return None


def available_backends(reasons=False):
    """{'torch': True, 'cpp': ..., 'cuda': ..., 'triton': ...}: which backends can run here (CUDA
    tensors when a GPU is present, else CPU tensors). With reasons=True, {name: (live, reason)}
    where reason is 'ok' or why not."""
    out = {}
    for name in _REAL:
        why = _why_not(name)
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
        raise RuntimeError(f"udd_fast backend {name!r} is not available: {_errors[name]}")
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
            if _dtype_ok(name, t.dtype) and _why_not(name, t.device) is None:
                return name
        return "torch"
    why = _why_not(_backend, t.device)
    if why is None and not _dtype_ok(_backend, t.dtype):
        why = f"dtype {t.dtype} is not supported"
    if why is not None:
        raise RuntimeError(f"udd_fast backend {_backend!r} was requested ({ENV_VAR} / set_backend) "
                           f"but cannot run on a {t.dtype} tensor on {t.device}: {why}")
    return _backend


def _check(ok: torch.Tensor, msg: str):
    """Raise on CPU; on CUDA an asynchronous device assert (no host sync in the hot path)."""
    if ok.is_cuda:
        torch._assert_async(ok, msg)
    elif not bool(ok):
        raise ValueError(msg)


# -- crop_resize --------------------------------------------------------------------------------
class _CropResize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, images, src, boxes, oh, ow, mod):
        ctx.save_for_backward(src, boxes)
        ctx.meta = (mod, images.shape)
        return mod.crop_resize_forward(images, src, boxes, oh, ow)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        src, boxes = ctx.saved_tensors
        mod, (m, _, h, w) = ctx.meta
        g = mod.crop_resize_backward(grad.contiguous(), src, boxes, m, h, w) if ctx.needs_input_grad[0] else None
        return g, None, None, None, None, None


def crop_resize(images, src, boxes, out_size):
    """Per output sample: crop images[src[n]] (padded right/bottom with 0.5) to the integer box
    boxes[n] = (y0, x0, y1, x1), then resize bilinearly to out_size. See decode.crop_resize_ref."""
    name = resolve(images)
    n = int(src.shape[0])
    if name == "torch" or n == 0:
        return crop_resize_ref(images, src, boxes, out_size)
    oh, ow = (int(s) for s in out_size)
    src = src.to(images.device, torch.int64).reshape(-1).contiguous()
    boxes = boxes.to(images.device, torch.int64).reshape(n, 4).contiguous()
    ok = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (boxes[:, :2] >= 0).all(1)
          & (src >= 0) & (src < images.shape[0])).all()
    _check(ok, "crop_resize: every box needs 0 <= y0 < y1 and 0 <= x0 < x1, every src an image index")
    return _CropResize.apply(images.contiguous(), src, boxes, oh, ow, _load(name))


# -- diff_augment -------------------------------------------------------------------------------
class _DiffAugment(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, params, index, mean, spec, mod):
        ctx.save_for_backward(params, index)
        ctx.meta = (mod, spec)
        return mod.diff_augment_forward(x, params, index, mean, *spec)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        params, index = ctx.saved_tensors
        mod, (flip, color, cutout, ops, cut_h, cut_w) = ctx.meta
        g = None
        if ctx.needs_input_grad[0]:
            g = mod.diff_augment_backward(grad.contiguous(), params, index, flip, color, cutout, ops, cut_h, cut_w)
        return g, None, None, None, None, None


def diff_augment(x, params, strategy, index=None):
    """IDC's augmentation with parameters as a tensor. See augment.diff_augment_ref.
    x [N,C,H,W]; params [G, NUM_PARAMS]; index [N] rows of params (siamese groups) or None (G = N).
    Differentiable w.r.t. x only."""
    if isinstance(strategy, str):
        strategy = Strategy.parse(strategy)
    name = resolve(x)
    n, _, h, w = x.shape
    if name == "torch" or n == 0:
        return diff_augment_ref(x, params, strategy, index)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    p = params.detach().to(x.device, acc).contiguous()
    if index is None:
        idx = torch.arange(n, device=x.device)
        if p.shape != (n, NUM_PARAMS):
            raise AssertionError(f"params {tuple(p.shape)} do not match {n} samples")
    else:
        idx = torch.as_tensor(index, device=x.device).to(torch.int64).reshape(-1).contiguous()
        if p.dim() != 2 or p.shape[1] != NUM_PARAMS or idx.shape[0] != n:
            raise AssertionError(f"params {tuple(p.shape)} / index {tuple(idx.shape)} do not match {n} samples")
        _check(((idx >= 0) & (idx < p.shape[0])).all(), "diff_augment: index out of range of params")
    x = x.contiguous()
    # Contrast's mean after brightness b and saturation is mean(x) + b: one small reduction first.
    mean = x.detach().mean(dim=(1, 2, 3), dtype=acc) if strategy.color else p
    spec = (bool(strategy.flip), bool(strategy.color), bool(strategy.cutout),
            [_OP_CODES[o] for o in strategy.ops], cutout_size(h), cutout_size(w))
    return _DiffAugment.apply(x, p, idx, mean, spec, _load(name))
