"""Compile every kernel variant udd_fast.ops can launch for Hopper (sm_90) and Ampere (sm_80) on a
machine without a GPU, and report registers, spills and shared memory per variant.

    python bench/compile_report.py                   # markdown tables (default matrix, both archs)
    python bench/compile_report.py --full            # the exhaustive matrix (slow)
    python bench/compile_report.py --json out.json   # every variant, for tests/test_compile_*.py

Triton: the ops are called on CPU tensors with the triton backend while JITFunction.run is replaced
by a recorder, so each launch's arguments are the ones udd_fast.ops and kernels/*.py really pass.
Each launch is then specialized by Triton's own binder for a CUDA target (pointer alignment and
integers divisible by 16 or equal to 1, as the JIT does) and compiled with triton.compile
(bundled ptxas). The tables below enumerate dtypes x channels x strategies x classes x sizes.

CUDA: csrc/*_cuda.cu (one file per op) compiled by nvcc for sm_80 and sm_90 with -Xptxas -v; the
default is -DUDD_FAST_KERNELS_ONLY (every kernel template instantiated for every dtype, without the
torch bindings, seconds), --cuda-full every file of the extension, bindings_cuda.cpp included,
against torch's headers (minutes; a CPU-only torch lacks one generated header,
c10/cuda/impl/cuda_cmake_macros.h, which is written into a temporary include folder).
"""
import argparse
import contextlib
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHS = (90, 80)
DTYPES = ("float32", "float16", "bfloat16", "float64")
# Every strategy string of IDC's DiffAug: flags x ordered distinct op lists (full matrix).
OPS = ("crop", "scale", "rotate")
FULL_STRATEGIES = ["_".join([f for f, on in zip(("flip", "color", "cutout"), flags) if on] + list(ops)) or "none"
                   for flags in itertools.product((0, 1), repeat=3)
                   for r in range(4) for ops in itertools.permutations(OPS, r)]
# Default matrix: every value of every constexpr (DO_FLIP, COLOR, CUTOUT, BILINEAR, NOPS 0-3, each op
# code in each of OP0-OP2) and the strategies the engine, compat and evaluation use.
DEFAULT_STRATEGIES = ["none", "crop", "scale", "rotate", "flip_color_cutout", "color_crop", "color_crop_cutout",
                      "crop_scale", "scale_rotate_crop", "rotate_crop_scale", "flip_color_crop_scale_rotate_cutout"]
FULL_STRATEGY = "flip_color_crop_scale_rotate_cutout"
# Image sides beyond CIFAR's (issue 23). Sizes reach the kernels as runtime integers, and the JIT
# specializes an integer only by divisibility by 16 (or == 1): 64, 128 and 224, their tiles at factor
# 2, cutouts and element counts are all multiples of 16, as 32 px's are, so crop_resize, diff_augment
# and region_mask launch the 32 px variants there (tests/repo/test_compile_triton.py checks it on
# these cases). What the networks at a side change are constexprs: response_map's BLOCK_P (the
# proxy's map: 4x4 at 64 and 128 px and 3x3 at 224 for ConvNet by resolution, as at 32 and 28 px;
# ConvNet-3's side/8 map, up to 28x28) and cfc_loss's D and K (ConvNet by resolution 2048 and 1152,
# ResNetAP-10 512, ConvNet-3 128 * (side/8)**2 up to 100352; Tiny-ImageNet's 200 classes).
SIDES = (64, 128, 224)


# -- Triton: the launch tables ------------------------------------------------------------------
def _tensor(shape, dtype, gen, aligned=True, kind="randn"):
    """CPU tensor of `shape`; aligned=False puts it one element past an aligned start, as a view
    into a larger buffer would be (the JIT then drops the 16-byte divisibility of that pointer)."""
    import torch

    n = 1
    for s in shape:
        n *= s
    buf = getattr(torch, kind)(n + 1, generator=gen, dtype=torch.float64).to(getattr(torch, dtype))
    return (buf[:n] if aligned else buf[1:]).view(shape)


def _backward(out, aligned):
    """Backward of sum(out); unaligned: through a concatenation behind one element, so the output's
    gradient arrives as a view one element past an aligned start (as torch.cat's backward gives)."""
    import torch

    if aligned:
        out.sum().backward()
    else:
        torch.cat([out.new_zeros(1), out.flatten()]).square().sum().backward()


def _crop_cases(full):
    """crop_resize forward (+ backward through the grad): (C, stored size, output size, n)."""
    sizes = [(3, (16, 16), (32, 32), 4), (1, (14, 14), (28, 28), 4), (3, (7, 5), (9, 3), 3), (1, (1, 1), (1, 1), 1)]
    sizes += [(3, (s, s), (s, s), 4) for s in SIDES]  # stored images decoded to formations of the same side
    dts = DTYPES
    for dt, (c, hw, ohw, n) in itertools.product(dts, sizes):
        if not full and dt != "float32" and hw != (16, 16):
            continue
        yield f"crop_resize {dt} C{c} {hw[0]}x{hw[1]}->{ohw[0]}x{ohw[1]} n{n}", dict(dt=dt, c=c, hw=hw, ohw=ohw, n=n)
    yield "crop_resize float32 C3 16x16->32x32 unaligned", dict(dt="float32", c=3, hw=(16, 16), ohw=(32, 32), n=4,
                                                                aligned=False)


def _run_crop(dt, c, hw, ohw, n, aligned=True):
    import torch
    from udd_fast import ops

    g = torch.Generator().manual_seed(0)
    m = max(1, n // 2)
    images = _tensor((m, c, *hw), dt, g, aligned).requires_grad_(True)
    src = torch.arange(n) % m
    boxes = torch.tensor([[0, 0, hw[0], hw[1]]] * n)
    _backward(ops.crop_resize(images, src, boxes, ohw), aligned)


def _augment_cases(full):
    """diff_augment forward and backward: dtype x channels x strategy x size."""
    if full:  # every strategy at a size divisible by 16 and at 1x1 (all ints 1); odd sizes below
        for dt, c, s, hw in itertools.product(DTYPES, (1, 3), FULL_STRATEGIES, ((32, 32), (1, 1))):
            yield f"diff_augment {dt} C{c} {s} {hw[0]}x{hw[1]}", dict(dt=dt, c=c, strategy=s, hw=hw)
        for dt, c, hw in itertools.product(DTYPES, (1, 3), ((28, 28), (7, 5), *((s, s) for s in SIDES))):
            yield f"diff_augment {dt} C{c} {FULL_STRATEGY} {hw[0]}x{hw[1]}", dict(dt=dt, c=c, strategy=FULL_STRATEGY,
                                                                               hw=hw)
    else:
        for s in DEFAULT_STRATEGIES:
            yield f"diff_augment float32 C3 {s} 32x32", dict(dt="float32", c=3, strategy=s, hw=(32, 32))
        for dt, c in itertools.product(DTYPES, (1, 3)):
            yield f"diff_augment {dt} C{c} {FULL_STRATEGY} 28x28", dict(dt=dt, c=c, strategy=FULL_STRATEGY, hw=(28, 28))
        for hw in ((7, 5), (1, 1)):
            yield f"diff_augment float32 C1 {FULL_STRATEGY} {hw[0]}x{hw[1]}", dict(dt="float32", c=1,
                                                                               strategy=FULL_STRATEGY, hw=hw)
        for s, side in itertools.product(("color_crop_cutout", FULL_STRATEGY), SIDES):
            yield f"diff_augment float32 C3 {s} {side}x{side}", dict(dt="float32", c=3, strategy=s, hw=(side, side))
    yield "diff_augment float16 C3 color_crop_cutout 32x32 unaligned", dict(dt="float16", c=3,
                                                                           strategy="color_crop_cutout",
                                                                           hw=(32, 32), aligned=False)


def _run_augment(dt, c, strategy, hw, aligned=True):
    import torch
    from udd_fast import ops
    from udd_fast.augment import NUM_PARAMS

    g = torch.Generator().manual_seed(1)
    n = 1 if hw == (1, 1) else 2  # 1x1: every integer argument equal to 1
    x = _tensor((n, c, *hw), dt, g, aligned).requires_grad_(True)
    params = _tensor((1, NUM_PARAMS), "float32", g, aligned, kind="rand")  # a row of a larger table
    _backward(ops.diff_augment(x, params, strategy, torch.zeros(n, dtype=torch.long)), aligned)


def _response_cases(full):
    """response_map: dtype x feature channels x map size x windows (9, or 1 given alone)."""
    # the proxy (ConvNet by resolution) at 32, 64 and 128 px (4x4) and 224 px (3x3); ConvNet-3's map at
    # 28 (3x3), 64, 128 and 224 px (8x8, 16x16, 28x28: BLOCK_P 64, 256, 1024); odd maps
    maps = [(128, 4, 4), (128, 3, 3), (128, 8, 8), (128, 16, 16), (128, 28, 28), (37, 3, 5), (1, 1, 7), (5, 1, 1)]
    for dt, (ch, h, w), nw in itertools.product(DTYPES, maps, (9, 1)):
        if not full and (dt != "float32" and (ch, h, w) not in ((128, 4, 4), (128, 28, 28))
                         or nw == 1 and (ch, h, w) != (5, 1, 1)):
            continue
        yield f"response_map {dt} {ch}x{h}x{w} NW{nw}", dict(dt=dt, ch=ch, h=h, w=w, nw=nw)
    yield "response_map float32 128x4x4 NW9 unaligned", dict(dt="float32", ch=128, h=4, w=4, nw=9, aligned=False)


def _run_response(dt, ch, h, w, nw, aligned=True):
    import torch
    from udd_fast import ops
    from udd_fast.region_search import window_grid

    g = torch.Generator().manual_seed(2)
    n, k = 3, 10
    fmap = _tensor((n, ch, h, w), dt, g, aligned)
    head = _tensor((k, ch * h * w), dt, g)
    ops.response_map(fmap, head, torch.arange(n) % k, 16, window_grid(16, 0.5)[:nw])


def _region_cases(full):
    """region_mask: dtype x channels x (windows, draws, size), ints equal to 1 included."""
    shapes = [(3, 9, 4, (32, 32)), (1, 9, 4, (28, 28)), (3, 1, 1, (5, 7)), (1, 1, 1, (1, 1))]
    shapes += [(3, 9, 4, (s, s)) for s in SIDES]
    for dt, (c, nw, d, hw) in itertools.product(DTYPES, shapes):
        if not full and dt != "float32" and hw != (32, 32):
            continue
        yield f"region_mask {dt} C{c} NW{nw} D{d} {hw[0]}x{hw[1]}", dict(dt=dt, c=c, nw=nw, d=d, hw=hw)
    yield "region_mask float32 C3 NW9 D4 32x32 unaligned", dict(dt="float32", c=3, nw=9, d=4, hw=(32, 32),
                                                               aligned=False)


def _run_region(dt, c, nw, d, hw, aligned=True):
    import torch
    from udd_fast import ops

    g = torch.Generator().manual_seed(3)
    n = 1 if hw == (1, 1) else 2  # 1x1: every integer argument equal to 1
    x = _tensor((n, c, *hw), dt, g, aligned, kind="rand")
    masks = torch.rand(nw, *hw, generator=g) > 0.5
    noise = _tensor((n, nw, d, c, *hw), dt, g)
    ops.region_mask(x, masks, noise, [0.5] * c, [0.25] * c)


def _cfc_cases(full):
    """cfc_loss forward and backward: dtype x classes K x feature width D."""
    # ConvNet at 32 px and by resolution at 64/128 px (2048), 224 px (1152), ResNetAP-10 (512), odd
    # widths; ConvNet-3 at 64, 128 and 224 px (128 * (side/8)**2). K: 200 is Tiny-ImageNet's.
    ks, widths = (1, 10, 100, 200, 1000), (2048, 1152, 512, 301, 1, 8192, 32768, 100352)
    for dt, k, d in itertools.product(DTYPES, ks, widths):
        if not full and not _default_cfc(dt, k, d):
            continue
        yield f"cfc_loss {dt} K{k} D{d}", dict(dt=dt, k=k, d=d)
    yield "cfc_loss float32 K100 D2048 unaligned", dict(dt="float32", k=100, d=2048, aligned=False)


def _default_cfc(dt, k, d):
    """The default matrix's cfc_loss cases: every dtype at D = 2048 (K = 200 in float32) and at the
    widest D (K = 100); float32 at the odd width 301 (every K but 200) and at the other widths with
    their class counts."""
    if d == 2048:
        return k != 200 or dt == "float32"
    if d == 100352:
        return k == 100 or dt == "float32" and k in (10, 1000)
    if dt != "float32":
        return False
    if d == 301:
        return k != 200
    return k in (10, 100) if d in (1152, 512) else k == 10


def _run_cfc(dt, k, d, aligned=True):
    import torch
    import torch.nn.functional as F
    from udd_fast import ops

    g = torch.Generator().manual_seed(4)
    n = 3
    f = _tensor((n, d), dt, g, aligned).requires_grad_(True)
    protos = F.normalize(torch.randn(k, d, generator=g), dim=1).to(getattr(torch, dt))
    ops.cfc_loss(f, torch.arange(n) % k, protos, 0.1).backward()


OPS_TABLES = {"crop_resize": (_crop_cases, _run_crop), "diff_augment": (_augment_cases, _run_augment),
              "response_map": (_response_cases, _run_response), "region_mask": (_region_cases, _run_region),
              "cfc_loss": (_cfc_cases, _run_cfc)}


# -- Triton: record, specialize, compile ---------------------------------------------------------
def _record_launches(full, only=None):
    """[(op, case label, JITFunction, args, kwargs)] for every kernel launch of every case."""
    os.environ["TRITON_INTERPRET"] = "0"  # JITFunctions, not the interpreter's functions
    import triton.runtime.jit as jit

    from udd_fast import ops
    from udd_fast.ops import backend

    kernels = backend._import_kernels()
    assert isinstance(kernels.cfc_loss._cfc_fwd, jit.JITFunction), "Triton kernels were loaded interpreted"
    launches, current = [], []

    def record(self, *args, grid, warmup, **kwargs):
        launches.append((*current, self, args, dict(kwargs)))

    saved_run, saved_interp = jit.JITFunction.run, backend._interpreting
    jit.JITFunction.run = record
    backend._interpreting = lambda: True  # let the triton backend take CPU tensors (nothing runs)
    try:
        with ops.use_backend("triton"):
            for op, (cases, run) in OPS_TABLES.items():
                if only and op not in only:
                    continue
                for label, kw in cases(full):
                    current[:] = [op, label]
                    run(**kw)
    finally:
        jit.JITFunction.run, backend._interpreting = saved_run, saved_interp
    return launches


def _specialize(fn, args, kwargs, backend):
    """What JITFunction.run does before compiling: (options, signature, constexprs, attrs)."""
    from triton import knobs
    from triton.runtime.jit import create_function_from_signature

    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    return fn._pack_args(backend, kwargs, bound, specialization, options)


def _as_i64(fn, signature, attrs, backend):
    """The variant for more than 2**31 elements: the element count `total` becomes i64."""
    i = fn.arg_names.index("total")
    signature = dict(signature, total="i64")
    return signature, {**attrs, (i,): backend.parse_attr("D")}


PTXAS_RE = {"regs": r"Used (\d+) registers", "spill_stores": r"(\d+) bytes spill stores",
            "spill_loads": r"(\d+) bytes spill loads", "stack": r"(\d+) bytes stack frame"}


def _parse_ptxas(log):
    out = {}
    for key, pat in PTXAS_RE.items():
        m = re.search(pat, log)
        out[key] = int(m.group(1)) if m else None
    return out


def _key_text(signature, constexprs, attrs, fn):
    def show(v):
        return str(v).replace("triton.language.", "tl.")

    cx = {fn.arg_names[k[0]]: show(v) for k, v in sorted(constexprs.items())}
    ones = [p.name for p in fn.params if not p.is_constexpr and signature[p.name] == "constexpr"]
    aligned = [fn.arg_names[k[0]] for k, v in sorted(attrs.items()) if v]
    return {"signature": {k: v for k, v in signature.items() if v != "constexpr"}, "constexprs": cx,
            "divisible_by_16": aligned, "ones": ones}


def compile_triton(full=False, archs=ARCHS, only=None, log=print):
    """Every distinct variant, compiled for every arch: a list of result dicts."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource

    launches = _record_launches(full, only)
    knobs.nvidia.dump_ptxas_log = True  # make_cubin prints ptxas -v's report: registers, spills
    results = []
    for cap in archs:
        target = GPUTarget("cuda", cap, 32)
        backend = CUDABackend(target)
        seen = {}
        variants, wide = [], set()
        for op, label, fn, args, kwargs in launches:
            options, sig, cx, attrs = _specialize(fn, args, kwargs, backend)
            variants.append((op, label, fn, options, sig, cx, attrs))
            if "total" in fn.arg_names and sig["total"] == "i32" and fn.__name__ not in wide:
                wide.add(fn.__name__)  # once per kernel: its first variant with a 64-bit count
                s64, a64 = _as_i64(fn, sig, attrs, backend)
                variants.append((op, label + " total>=2**31", fn, options, s64, cx, a64))
        for op, label, fn, options, sig, cx, attrs in variants:
            key = (fn.__name__, repr(sorted(sig.items())), repr(sorted((k, str(v)) for k, v in cx.items())),
                   repr(sorted(attrs.items())))
            if key in seen:
                seen[key]["cases"].append(label)
                continue
            res = {"tool": "triton", "arch": f"sm_{cap}", "op": op, "kernel": fn.__name__, "cases": [label],
                   **_key_text(sig, cx, attrs, fn)}
            t0 = time.perf_counter()
            buf = io.StringIO()
            try:
                with contextlib.redirect_stdout(buf):
                    k = triton.compile(ASTSource(fn, sig, cx, attrs), target=target, options=options.__dict__)
                res.update(ok=True, shared=k.metadata.shared, num_warps=k.metadata.num_warps,
                           **_parse_ptxas(buf.getvalue()))
                if res["regs"] is None:
                    res.update(ok=False, error="no ptxas report (a cached kernel? use a fresh TRITON_CACHE_DIR)")
            except Exception as e:  # reported per variant, and fails the tests
                res.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000])
            res["seconds"] = round(time.perf_counter() - t0, 3)
            seen[key] = res
            results.append(res)
            log(f"sm_{cap} {fn.__name__:24s} {'ok' if res['ok'] else 'FAILED'} regs={res.get('regs')} "
                f"spills={res.get('spill_stores')} {res['seconds']:.2f}s  {label}")
    return results


# -- CUDA: nvcc -----------------------------------------------------------------------------------
def nvcc_path():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and Path(home, "bin", "nvcc").exists():
        return str(Path(home, "bin", "nvcc"))
    return shutil.which("nvcc")


def _torch_includes(tmp):
    """torch's include folders, plus a folder holding the one generated header a CPU-only torch lacks."""
    import torch.utils.cpp_extension as ce

    dirs = ce.include_paths() + [sysconfig.get_paths()["include"]]
    shim = Path(tmp, "shim", "c10", "cuda", "impl")
    if not Path(dirs[0], "c10", "cuda", "impl", "cuda_cmake_macros.h").exists():
        shim.mkdir(parents=True, exist_ok=True)
        (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        dirs.append(str(Path(tmp, "shim")))
    return dirs


def _demangle(names):
    tool = shutil.which("c++filt") or shutil.which("cu++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def _short(name):
    """'void udd_fast::(anonymous namespace)::cfc_fwd_kernel<c10::Half, float>(...)' ->
    'cfc_fwd_kernel<c10::Half, float>'."""
    name = name.replace("udd_fast::", "").replace("(anonymous namespace)::", "").removeprefix("void ")
    depth, out = 0, []
    for ch in name:
        if ch == "(" and depth == 0:
            break
        depth += ch == "<"
        depth -= ch == ">"
        out.append(ch)
    return "".join(out).strip()


def cuda_sources(full_tu=False):
    """The CUDA extension's files nvcc compiles: each op's kernels, and with full_tu its bindings."""
    return sorted((REPO / "csrc").glob("*_cuda.cu")) + ([REPO / "csrc" / "bindings_cuda.cpp"] if full_tu else [])


def compile_cuda(full_tu=False, archs=ARCHS, log=print):
    """nvcc csrc/*_cuda.cu for every arch in one call; one result per (kernel, arch), plus the
    command and its wall time. Raises FileNotFoundError without nvcc."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (CUDA_HOME, CUDA_PATH or PATH)")
    with tempfile.TemporaryDirectory() as tmp:
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
        gencode.append(f"-gencode=arch=compute_{max(archs)},code=compute_{max(archs)}")  # PTX, as setup.py
        import torch.utils.cpp_extension as ce

        # the flags torch's CUDAExtension and setup.py pass, plus -Xptxas -v for the report
        sources = [str(f) for f in cuda_sources(full_tu)]
        cmd = [nvcc, "-c", *sources, "-odir", tmp, "-std=c++20", *ce.COMMON_NVCC_FLAGS, "-O3", "-lineinfo",
               "-Xptxas", "-v", *gencode, *[f"-I{d}" for d in _torch_includes(tmp)]]
        cmd += ["-DTORCH_EXTENSION_NAME=_C_cuda"] if full_tu else ["-DUDD_FAST_KERNELS_ONLY"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    shown = " ".join("nvcc" if c == nvcc else "<tmp>" if c == tmp else
                     str(Path(c).relative_to(REPO)) if c in sources else c for c in cmd if not c.startswith("-I"))
    shown += " -I<torch's include folders>"
    if proc.returncode != 0:
        errors = "\n".join(line for line in text.splitlines() if "error" in line)[:4000]
        return {"ok": False, "cmd": shown, "seconds": seconds, "error": errors or text[-4000:], "kernels": []}
    kernels, cur = [], None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line)
        if m:
            cur = {"tool": "nvcc", "mangled": m.group(1), "arch": m.group(2), "ok": True}
            kernels.append(cur)
            continue
        if cur is None:
            continue
        for key, pat in PTXAS_RE.items():
            mm = re.search(pat, line)
            if mm:
                cur[key] = int(mm.group(1))
        mm = re.search(r"(\d+) bytes smem", line)
        if mm:
            cur["static_smem"] = int(mm.group(1))
    names = _demangle(sorted({k["mangled"] for k in kernels}))
    for k in kernels:
        k["kernel"] = _short(names[k["mangled"]])
        k.setdefault("static_smem", 0)
    log(f"nvcc: {len(kernels)} kernel entries in {seconds:.1f} s")
    return {"ok": True, "cmd": shown, "seconds": seconds, "kernels": kernels,
            "warnings": sum("warning" in line for line in text.splitlines())}


# -- report ---------------------------------------------------------------------------------------
def _triton_table(results):
    rows = ["| kernel | arch | variants | max regs | max spill stores/loads (bytes) | max shared (bytes) "
            "| variant with most regs |", "|---|---|---|---|---|---|---|"]
    groups = {}
    for r in results:
        groups.setdefault((r["kernel"], r["arch"]), []).append(r)
    for (kernel, arch), rs in groups.items():
        ok = [r for r in rs if r["ok"]]
        bad = len(rs) - len(ok)
        if not ok:
            rows.append(f"| {kernel} | {arch} | {len(rs)} ({bad} failed) | - | - | - | - |")
            continue
        top = max(ok, key=lambda r: r["regs"])
        spill = max(ok, key=lambda r: (r["spill_stores"] or 0, r["spill_loads"] or 0))
        rows.append(f"| {kernel} | {arch} | {len(rs)}{f' ({bad} failed)' if bad else ''} | {top['regs']} | "
                    f"{spill['spill_stores']}/{spill['spill_loads']} | {max(r['shared'] for r in ok)} | "
                    f"{top['cases'][0]} |")
    return "\n".join(rows)


def _cuda_table(cuda):
    rows = ["| kernel | arch | regs | spill stores/loads (bytes) | static smem (bytes) |", "|---|---|---|---|---|"]
    for k in sorted(cuda["kernels"], key=lambda k: (k["kernel"], k["arch"])):
        rows.append(f"| {k['kernel']} | {k['arch']} | {k['regs']} | {k['spill_stores']}/{k['spill_loads']} | "
                    f"{k['static_smem']} |")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the exhaustive Triton matrix (slow)")
    ap.add_argument("--cuda-full", action="store_true", help="nvcc the whole extension TU (minutes)")
    ap.add_argument("--arch", type=int, nargs="+", default=list(ARCHS))
    ap.add_argument("--only", nargs="+", choices=["triton", "cuda", *OPS_TABLES], default=None)
    ap.add_argument("--json", help="write every result here")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    os.environ["TRITON_INTERPRET"] = "0"  # compiled kernels, not the interpreter's
    log = (lambda *_: None) if a.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    only = set(a.only or ["triton", "cuda"])
    ops_only = only & set(OPS_TABLES)
    out = {"triton": None, "cuda": None}
    if ops_only or "triton" in only:
        # a fresh cache: every variant is really compiled and ptxas reports on it
        with tempfile.TemporaryDirectory(prefix="udd_fast_triton_") as cache:
            os.environ["TRITON_CACHE_DIR"] = cache
            t0 = time.perf_counter()
            res = compile_triton(a.full, a.arch, ops_only or None, log)
            out["triton"] = {"results": res, "seconds": time.perf_counter() - t0}
    if "cuda" in only:
        try:
            out["cuda"] = compile_cuda(a.cuda_full, a.arch, log)
        except FileNotFoundError as e:
            out["cuda"] = {"ok": False, "skipped": str(e), "kernels": []}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=str))
    if out["triton"]:
        res = out["triton"]["results"]
        print(f"Triton {__import__('triton').__version__}: {len(res)} variants, "
              f"{sum(not r['ok'] for r in res)} failed, {out['triton']['seconds']:.0f} s\n")
        print(_triton_table(res) + "\n")
        for r in res:
            if not r["ok"]:
                print(f"FAILED {r['arch']} {r['kernel']} ({r['cases'][0]}): {r['error'][:300]}")
    if out["cuda"]:
        c = out["cuda"]
        if c.get("skipped"):
            print(f"CUDA: skipped ({c['skipped']})")
        elif not c["ok"]:
            print(f"CUDA: nvcc FAILED: {c['cmd']}\n{c['error']}")
        else:
            print(f"CUDA: `{c['cmd']}` ({c['seconds']:.0f} s)\n\n" + _cuda_table(c))
    failed = (out["triton"] and any(not r["ok"] for r in out["triton"]["results"])) or \
             (out["cuda"] and not out["cuda"]["ok"] and not out["cuda"].get("skipped"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
