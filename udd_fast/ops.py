"""The hot paths behind one API. The engine calls only these functions; each has a plain-PyTorch
reference (`*_ref`) that every faster backend is tested against: crop_resize and diff_augment
(forward and backward), response_map and region_mask (forward only), cfc_loss (forward and a fused
first-order backward).

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
live.
"""
import contextlib
import functools
import importlib
import importlib.util
import json
import os
import sys
import threading
import warnings
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

from .augment import NUM_PARAMS, Strategy, cutout_size, diff_augment_ref
from .cfc import cfc_loss_ref
from .decode import crop_resize_ref
from . import regions as _regions  # module, not names: regions imports ops (a cycle)

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
    """udd_fast.kernels: kernels/ of the source tree this udd_fast comes from (a checkout, run via
    PYTHONPATH or an editable install), registered under that name; else the installed subpackage
    (setup.py maps kernels/ there). The source tree goes first so that an editable install of
    another checkout cannot pair this package with that checkout's kernels."""
    name = "udd_fast.kernels"
    if name in sys.modules:
        return sys.modules[name]
    init = Path(__file__).resolve().parent.parent / "kernels" / "__init__.py"
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
        if name not in _modules:
            try:
                if name in _EXTENSIONS:
                    _modules[name] = importlib.import_module(_EXTENSIONS[name])
                elif name == "triton":
                    import triton  # noqa: F401  (a clear error when Triton itself is missing)
                    _modules[name] = _import_kernels()
                else:
                    _modules[name] = sys.modules[__name__]
            except Exception as e:  # any import failure is reported, never hidden
                _modules[name] = None
                _errors[name] = f"{type(e).__name__}: {e}"
                if name in _EXTENSIONS and _build_reason(name):
                    _errors[name] = f"{_EXTENSIONS[name]} was not built: {_build_reason(name)} ({_errors[name]})"
        mod = _modules[name]
        if mod is None and name not in _warned:
            _warned.add(name)
            warnings.warn(f"udd_fast.ops: backend {name!r} is unavailable ({_errors[name]}); "
                          f"'auto' falls back (see udd_fast.ops.available_backends())", RuntimeWarning, stacklevel=3)
    return mod


_EXTENSIONS = {"cpp": "udd_fast._C", "cuda": "udd_fast._C_cuda"}
BUILD_REPORT = Path(__file__).resolve().parent / "_build_report.json"  # written by setup.py's build


def _build_reason(name):
    """Why setup.py did not build backend `name`'s extension (from its build report), or None."""
    try:
        entry = json.loads(BUILD_REPORT.read_text()).get(_EXTENSIONS[name], {})
    except (OSError, ValueError):  # no report: built by other means, or not installed by setup.py
        return None
    return None if entry.get("built", True) else entry.get("reason", "unknown reason")


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


# -- response_map (forward only) ----------------------------------------------------------------
def _needs_grad(*ts):
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


@functools.lru_cache(maxsize=64)
def _window_weights(h, w, tile, windows):
    """[h*w, 9] float64: window scores are linear in R (bilinear upsampling, then a box mean), so
    scores = R.flatten(1) @ this matrix; built by running the reference on the h*w unit maps."""
    basis = torch.eye(h * w, dtype=torch.float64).view(h * w, h, w)
    return _regions.window_scores_ref(basis, tile, torch.tensor(windows, dtype=torch.int64))


def response_map(feature_map, head_weight, labels, tile, windows):
    """(R [N,h,w], window scores [N,9], usage entropy [N]) in one pass: the true-class response
    (regions.response_map_ref), the mean of R upsampled to tile x tile inside each window
    (window_scores_ref) and UE (usage_entropy_ref). Forward only: with inputs that require grad
    under grad mode it runs the references so autograd still works."""
    name = resolve(feature_map)
    n, ch, h, w = feature_map.shape
    if name == "torch" or n == 0 or _needs_grad(feature_map, head_weight):
        R = _regions.response_map_ref(feature_map, head_weight, labels)
        return R, _regions.window_scores_ref(R, tile, windows.to(R.device)), _regions.usage_entropy_ref(R)
    acc = torch.float64 if feature_map.dtype == torch.float64 else torch.float32
    wmat = _window_weights(h, w, int(tile), tuple(map(tuple, windows.tolist()))).to(feature_map.device, acc)
    labels = labels.to(feature_map.device, torch.int64).reshape(-1).contiguous()
    head = head_weight.detach().to(feature_map.dtype).contiguous()
    _check(((labels >= 0) & (labels < head.shape[0])).all(), "response_map: labels out of range of the head")
    if head.shape[1] != ch * h * w or labels.shape[0] != n:
        raise AssertionError(f"head {tuple(head.shape)} / labels {tuple(labels.shape)} do not match "
                             f"feature map {tuple(feature_map.shape)}")
    with torch.no_grad():
        return tuple(_load(name).response_map_forward(feature_map.detach().contiguous(), head, labels, wmat))


# -- region_mask (forward only) -----------------------------------------------------------------
def region_mask(x, masks, noise, mean, std):
    """normalize(clamp(x + noise inside each window, 0, 1)) for every window and draw:
    x [N,C,H,W], masks [W,H,W] bool, noise [N,W,D,C,H,W] (already scaled) -> [N,W,D,C,H,W].
    See regions.region_mask_ref. Forward only (the references run when a gradient is needed)."""
    name = resolve(x)
    n, c, h, w = x.shape
    if name == "torch" or noise.numel() == 0 or _needs_grad(x, noise):
        return _regions.region_mask_ref(x, masks, noise, mean, std)
    nw, d = noise.shape[1], noise.shape[2]
    if noise.shape != (n, nw, d, c, h, w) or masks.shape != (nw, h, w):
        raise AssertionError(f"noise {tuple(noise.shape)} / masks {tuple(masks.shape)} do not match x {tuple(x.shape)}")
    dev, dt = x.device, x.dtype
    # mean/std: C values or one (broadcast), as the reference's view(1, 1, 1, -1, 1, 1) allows
    mean = torch.broadcast_to(torch.as_tensor(mean, device=dev, dtype=dt).reshape(-1), (c,)).contiguous()
    std = torch.broadcast_to(torch.as_tensor(std, device=dev, dtype=dt).reshape(-1), (c,)).contiguous()
    m = masks.to(dev, torch.uint8).contiguous()
    with torch.no_grad():
        z = noise.detach().to(dt).contiguous()
        return _load(name).region_mask_forward(x.detach().contiguous(), m, z, mean, std)


# -- cfc_loss -----------------------------------------------------------------------------------
class _CfcLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, labels, prototypes, tau, mean, mod):
        loss, logits, lse, denom = mod.cfc_loss_forward(features, labels, prototypes, tau)
        ctx.save_for_backward(features, labels, prototypes, logits, lse, denom)
        ctx.meta = (mod, tau, mean)
        return (loss.mean() if mean else loss).to(features.dtype)

    @staticmethod
    def backward(ctx, grad):
        features, labels, prototypes, logits, lse, denom = ctx.saved_tensors
        mod, tau, mean = ctx.meta
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        if torch.is_grad_enabled():
            # create_graph: a second derivative is wanted, so take this backward through the reference
            # (the engine never does: it differentiates its total loss once w.r.t. the images)
            with torch.enable_grad():
                loss = cfc_loss_ref(features, labels, prototypes, tau, "mean" if mean else "none")
                (gf,) = torch.autograd.grad(loss, features, grad, create_graph=True)
            return gf, None, None, None, None, None
        n = features.shape[0]
        g = (grad.expand(n) / n) if mean else grad
        g = g.to(lse.dtype).contiguous()
        gf = mod.cfc_loss_backward(g, features, labels, prototypes, logits, lse, denom, tau)
        return gf, None, None, None, None, None


def cfc_loss(features, labels, prototypes, tau, reduction="mean"):
    """CFC loss: -log softmax_k(<normalize(f_i), mu_k> / tau)[y_i], mean over i or per sample
    ('none'); prototypes [K, D] already L2-normalized. See cfc.cfc_loss_ref. Differentiable w.r.t.
    the features: the fused backward for a first derivative; under create_graph the backward runs
    through the reference so that second derivatives stay exact. Prototypes that require grad, or
    n == 0, run the reference."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    name = resolve(features)
    n, dim = features.shape
    if name == "torch" or n == 0 or _needs_grad(prototypes):
        if features.dtype in (torch.float16, torch.bfloat16):
            # in float32, as the fused kernels accumulate: F.normalize's eps (1e-12) is 0 in float16,
            # so a zero feature row would give 0/0 = NaN there
            return cfc_loss_ref(features.float(), labels, prototypes.float(), tau, reduction).to(features.dtype)
        return cfc_loss_ref(features, labels, prototypes, tau, reduction)
    labels = labels.to(features.device, torch.int64).reshape(-1).contiguous()
    protos = prototypes.detach().to(features.dtype).contiguous()
    if protos.dim() != 2 or protos.shape[1] != dim or labels.shape[0] != n:
        raise AssertionError(f"prototypes {tuple(protos.shape)} / labels {tuple(labels.shape)} do not match "
                             f"features {tuple(features.shape)}")
    _check(((labels >= 0) & (labels < protos.shape[0])).all(), "cfc_loss: labels out of range of the prototypes")
    return _CfcLoss.apply(features.contiguous(), labels, protos, float(tau), reduction == "mean", _load(name))
