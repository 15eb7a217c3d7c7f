"""Checks of udd_fast.ops on a device: `python bench/gpu_check.py` on a machine with CUDA (after the
extension build), or `--device cpu --tiny` (what `bench/gpu_session.py --dry-run` runs in CI).

1. Correctness: every live backend against the reference, forward and backward, float32 (and on a
   GPU float16/bfloat16 against the float32 reference, dtype-aware tolerances).
2. Timing at the CIFAR-10 loop's shapes (IPC 1/10/50; K=100 for the UDD ops too): median ms per op
   and backend, forward and forward+backward, against torch eager (the reference), and the
   compulsory bytes (inputs read once, outputs written once) against a same-size device-to-device
   copy (`torch.empty_like(buf).copy_(buf)`). Targets: faster than eager, within 2x of the copy at
   IPC 10 and 50.
Both parts are tables: one row of CASES / TIMED per op and shape. Prints markdown (and writes it
to --out); exits 1 when a correctness row fails."""
import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from udd_fast import ops  # noqa: E402
from udd_fast.augment import Strategy, sample_params  # noqa: E402
from udd_fast.decode import decode_plan  # noqa: E402
from udd_fast.ops.cfc_loss import cfc_loss_ref  # noqa: E402
from udd_fast.ops.crop_resize import crop_resize_ref  # noqa: E402
from udd_fast.ops.diff_augment import diff_augment_ref  # noqa: E402
from udd_fast.ops.region_mask import region_mask_ref  # noqa: E402
from udd_fast.ops.response_map import response_map_ref, usage_entropy_ref, window_scores_ref  # noqa: E402
from udd_fast.region_search import window_grid, window_pixel_masks  # noqa: E402

C, FACTOR = 3, 2
CH, FH, D, DRAWS = 128, 4, 2048, 4  # proxy feature map 128x4x4, matching features 2048-d, 4 jitter draws
TOL = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}


@dataclass(frozen=True)
class Sizes:
    """The shapes: CIFAR-10's on a GPU; tiny ones for a CPU dry run."""
    size: int = 32
    k: int = 10
    ipcs: tuple = (1, 10, 50)
    udd_sets: tuple = ((10, 1), (10, 10), (10, 50), (100, 1), (100, 10))  # (K, IPC)
    batch_real: int = 64
    chunk: int = 32  # jitter formations per region_mask call
    reps: int = 50


FULL = Sizes()
TINY = Sizes(size=16, k=3, ipcs=(1,), udd_sets=((3, 1),), batch_real=4, chunk=2, reps=3)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# -- inputs -------------------------------------------------------------------------------------
def crop_inputs(sz, ipc, dev, dtype=torch.float32, extra_boxes=False):
    images = torch.rand(sz.k * ipc, C, sz.size, sz.size, generator=_gen(0)).to(dev, dtype)
    src, boxes = decode_plan(sz.k * ipc, sz.size, FACTOR, dev)
    if extra_boxes:  # a 1x1 box and boxes reaching into the 0.5 padding
        s = sz.size
        src = torch.cat([src, torch.tensor([0, 0, 0], device=dev)])
        boxes = torch.cat([boxes, torch.tensor([[0, 0, 1, 1], [s - 1, s - 1, s + 1, s + 2], [5, 7, s - 2, s + 1]],
                                               device=dev)])
    return images, src, boxes


def aug_inputs(sz, kind, ipc, dev, dtype=torch.float32, strategy="color_crop_cutout"):
    """'real'/'syn': one siamese draw per class; 'net': per-sample draws (network update)."""
    g = _gen(1)
    s = Strategy.parse("color_crop" if kind == "net" else strategy)
    if kind == "net":
        x = torch.randn(sz.batch_real, C, sz.size, sz.size, generator=g).to(dev, dtype)
        return x, sample_params(torch.arange(x.shape[0]), s, sz.size, op_key=7).to(dev), s, None
    per = sz.batch_real if kind == "real" else min(FACTOR * FACTOR * ipc, 128)
    x = torch.randn(sz.k * per, C, sz.size, sz.size, generator=g).to(dev, dtype)
    idx = torch.arange(sz.k, device=dev).repeat_interleave(per)
    return x, sample_params(torch.randint(0, 2 ** 62, (sz.k,), generator=g), s, sz.size).to(dev), s, idx


def response_inputs(sz, k, ipc, dev, dtype=torch.float32):
    g = _gen(3)
    n = k * ipc * FACTOR * FACTOR
    fmap = torch.randn(n, CH, FH, FH, generator=g).to(dev, dtype)
    head = (torch.randn(k, CH * FH * FH, generator=g) / 40).to(dev, dtype)
    tile = sz.size // FACTOR
    return fmap, head, torch.arange(k, device=dev).repeat_interleave(n // k), tile, window_grid(tile, 0.5).to(dev)


def region_inputs(sz, dev, dtype=torch.float32):
    g = _gen(4)
    tile = sz.size // FACTOR
    x = torch.rand(sz.chunk, C, sz.size, sz.size, generator=g).to(dev, dtype)
    masks = window_pixel_masks(window_grid(tile, 0.5), tile, sz.size).to(dev)
    noise = (torch.randn(sz.chunk, 9, DRAWS, C, sz.size, sz.size, generator=g) * 0.2).to(dev, dtype)
    mean = torch.tensor([0.4914, 0.4822, 0.4465], device=dev, dtype=dtype)
    std = torch.tensor([0.2023, 0.1994, 0.2010], device=dev, dtype=dtype)
    return x, masks, noise, mean, std


def cfc_inputs(k, ipc, dev, dtype=torch.float32):
    g = _gen(5)
    per = min(FACTOR * FACTOR * ipc * 2, 128)
    feats = torch.randn(k * per, D, generator=g).relu().to(dev, dtype)
    protos = F.normalize(torch.randn(k, D, generator=g).relu(), dim=1).to(dev, dtype)
    return feats, torch.arange(k, device=dev).repeat_interleave(per), protos


# -- 1. correctness ------------------------------------------------------------------------------
@dataclass
class Case:
    """fast(x) and ref(x_float32) of the differentiable input x (or None: forward only)."""
    op: str
    inputs: Callable  # (sizes, device, dtype) -> (x, fast, ref)
    backward: bool
    bwd_factor: float = 4.0  # backward tolerance = factor x forward tolerance


def _crop_case(sz, dev, dt):
    images, src, boxes = crop_inputs(sz, 3, dev, dt, extra_boxes=True)
    out = (sz.size, sz.size)
    return images, lambda x: ops.crop_resize(x, src, boxes, out), lambda x: crop_resize_ref(x, src, boxes, out)


def _aug_case(strategy):
    def make(sz, dev, dt):
        s = Strategy.parse(strategy)
        n, side = 10, sz.size - 3  # an odd size
        x = torch.randn(n, C, side, side, generator=_gen(2)).to(dev, dt)
        p = sample_params(torch.randint(0, 2 ** 62, (n,), generator=_gen(6)), s, side).to(dev)
        return x, lambda v: ops.diff_augment(v, p, s), lambda v: diff_augment_ref(v, p, s)
    return make


def _response_case(sz, dev, dt):
    fmap, head, labels, tile, windows = response_inputs(sz, sz.udd_sets[-1][0], 1, dev, dt)

    def ref(f):
        R = response_map_ref(f, head.float(), labels)
        return R, window_scores_ref(R, tile, windows), usage_entropy_ref(R)
    return fmap, lambda f: ops.response_map(f, head, labels, tile, windows), ref


def _region_case(sz, dev, dt):
    x, masks, noise, mean, std = region_inputs(sz, dev, dt)
    return x, (lambda v: ops.region_mask(v, masks, noise, mean, std),
               lambda v: region_mask_ref(v, masks, noise.float(), mean.float(), std.float()))


def _cfc_case(k, ipc):
    def make(sz, dev, dt):
        feats, labels, protos = cfc_inputs(k, ipc, dev, dt)
        return feats, lambda f: ops.cfc_loss(f, labels, protos, 0.1), lambda f: cfc_loss_ref(f, labels, protos.float(), 0.1)
    return make


def _two(make):
    """Adapt builders that return (x, (fast, ref))."""
    def inner(sz, dev, dt):
        x, pair = make(sz, dev, dt)
        return (x, *pair)
    return inner


def cases(sz):
    out = [Case("crop_resize", _crop_case, True)]
    out += [Case(f"diff_augment {s}", _aug_case(s), True, 2.0)
            for s in ("color_crop_cutout", "color_crop_cutout_flip_scale_rotate", "color_crop_scale_rotate")]
    out += [Case("response_map", _response_case, False), Case("region_mask", _two(_region_case), False)]
    out += [Case(f"cfc_loss K{k} IPC{ipc}", _cfc_case(k, ipc), True) for k, ipc in sz.udd_sets[-2:]]
    return out


def _as_tuple(v):
    return v if isinstance(v, tuple) else (v,)


def check_case(case, sz, dev, dtype):
    """(max relative forward error, max relative backward error or 0, ok)."""
    x0, fast, ref = case.inputs(sz, dev, dtype)
    x = x0.clone().requires_grad_(case.backward)
    xr = x0.float().clone().requires_grad_(case.backward)
    with torch.set_grad_enabled(case.backward):
        outs, refs = _as_tuple(fast(x)), _as_tuple(ref(xr))
    e_f = max(float((o.detach().float() - r.detach()).abs().max()) / max(1.0, float(r.detach().abs().max()))
              for o, r in zip(outs, refs))
    e_b = 0.0
    if case.backward:
        g = torch.randn(refs[0].shape, generator=_gen(8)).to(dev)
        outs[0].backward(g.to(outs[0].dtype))
        refs[0].backward(g)
        e_b = float((x.grad.float() - xr.grad).abs().max()) / max(1e-3, float(xr.grad.abs().max()))
    tol = TOL[dtype]
    return e_f, e_b, e_f <= tol and e_b <= case.bwd_factor * tol


def check_correctness(backends, dev, sz, dtypes):
    rows = []
    for name in backends:
        with ops.use_backend(name):
            for dtype in dtypes:
                if name == "cpp" and dtype not in (torch.float32, torch.float64):
                    continue
                for case in cases(sz):
                    e_f, e_b, ok = check_case(case, sz, dev, dtype)
                    rows.append((name, case.op, str(dtype).replace("torch.", ""), e_f, e_b, ok))
    lines = ["| backend | op | dtype | max fwd err (rel) | max bwd err (rel) | ok |", "|---|---|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2e} | {r[4]:.2e} | {'yes' if r[5] else '**NO**'} |"
              for r in rows]
    return lines, all(r[5] for r in rows)


# -- 2. timing -----------------------------------------------------------------------------------
def median_ms(fn, dev, reps, warmup=3):
    """Median ms of fn(): CUDA events on a GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    cuda = torch.device(dev).type == "cuda"
    times = []
    for _ in range(reps):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


@dataclass
class Timed:
    label: str
    nbytes: int  # compulsory: inputs read once, outputs written once (forward)
    fwd: Callable
    both: Callable = None  # forward + backward, or None (forward-only op)


def _nbytes(*ts):
    return sum(t.numel() * t.element_size() for t in ts)


def timed_cases(sz, dev):
    out = []
    for ipc in sz.ipcs:
        images, src, boxes = crop_inputs(sz, ipc, dev)
        leaf = images.clone().requires_grad_(True)
        o = (sz.size, sz.size)
        res = ops.crop_resize(images, src, boxes, o)
        grad = torch.randn_like(res)
        out.append(Timed(f"crop_resize IPC{ipc} {images.shape[0]}->{src.numel()}", _nbytes(images, src, boxes, res),
                         lambda i=images, s=src, b=boxes: ops.crop_resize(i, s, b, o),
                         lambda i=leaf, s=src, b=boxes, g=grad: ops.crop_resize(i, s, b, o).backward(g)))
    for kind, ipc in [("real", sz.ipcs[-1])] + [("syn", i) for i in sz.ipcs] + [("net", sz.ipcs[-1])]:
        x, p, s, idx = aug_inputs(sz, kind, ipc, dev)
        leaf = x.clone().requires_grad_(True)
        grad = torch.randn_like(x)
        label = {"real": "real", "syn": f"syn IPC{ipc}", "net": "net-update"}[kind]
        out.append(Timed(f"diff_augment {label} N={x.shape[0]} {s}", 2 * _nbytes(x) + _nbytes(p),
                         lambda x=x, p=p, s=s, i=idx: ops.diff_augment(x, p, s, i),
                         lambda x=leaf, p=p, s=s, i=idx, g=grad: ops.diff_augment(x, p, s, i).backward(g)))
    for k, ipc in sz.udd_sets:
        fmap, head, labels, tile, windows = response_inputs(sz, k, ipc, dev)
        n = fmap.shape[0]
        out.append(Timed(f"response_map K{k} IPC{ipc} N={n}", _nbytes(fmap, head, labels) + n * (FH * FH + 9 + 1) * 4,
                         lambda f=fmap, h=head, y=labels, t=tile, w=windows: ops.response_map(f, h, y, t, w)))
    x, masks, noise, mean, std = region_inputs(sz, dev)
    out.append(Timed(f"region_mask chunk {sz.chunk}x9x{DRAWS}", _nbytes(x, masks) + 2 * _nbytes(noise),
                     lambda: ops.region_mask(x, masks, noise, mean, std)))
    for k, ipc in sz.udd_sets:
        feats, labels, protos = cfc_inputs(k, ipc, dev)
        leaf = feats.clone().requires_grad_(True)
        out.append(Timed(f"cfc_loss K{k} IPC{ipc} n={feats.shape[0]}", _nbytes(feats, protos, labels) + 4,
                         lambda f=feats, y=labels, p=protos: ops.cfc_loss(f, y, p, 0.1),
                         lambda f=leaf, y=labels, p=protos: ops.cfc_loss(f, y, p, 0.1).backward()))
    return out


def timings(backends, dev, sz):
    head = ["case", "MB", "copy ms"] + [f"{b} fwd" for b in backends] + [f"{b} fwd+bwd" for b in backends]
    fast = [b for b in backends if b != "torch"]
    head += [f"eager/{b} fwd" for b in fast] + [f"{b}/copy fwd" for b in fast]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case in timed_cases(sz, dev):
        fwd, both = {}, {}
        for b in backends:
            with ops.use_backend(b):
                with torch.no_grad():
                    fwd[b] = median_ms(case.fwd, dev, sz.reps)
                both[b] = median_ms(case.both, dev, sz.reps) if case.both else None
        buf = torch.empty(max(1, case.nbytes // 4), dtype=torch.float32, device=dev)
        cp = median_ms(lambda: torch.empty_like(buf).copy_(buf), dev, sz.reps)
        cells = [case.label, f"{case.nbytes / 1e6:.2f}", f"{cp:.4f}"] + [f"{fwd[b]:.4f}" for b in backends]
        cells += [f"{both[b]:.4f}" if both[b] is not None else "-" for b in backends]
        cells += [f"{fwd['torch'] / fwd[b]:.1f}x" for b in fast] + [f"{fwd[b] / cp:.2f}x" for b in fast]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def backends_for(dev):
    """torch plus the live fast backends that run on this device."""
    live = ops.available_backends(reasons=True)
    fast = ("triton", "cuda") if torch.device(dev).type == "cuda" else ("cpp", "triton")
    return ["torch"] + [b for b in fast if live[b][0] and ops.why_unavailable(b, torch.device(dev)) is None], live


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--tiny", action="store_true", help="tiny shapes and few repetitions (a CPU dry run)")
    p.add_argument("--out", default=None, help="also write the markdown here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check.py --device cuda needs a CUDA device (use --device cpu --tiny for a dry run)")
    sz = TINY if args.tiny else FULL
    backends, live = backends_for(args.device)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    dtypes = [torch.float32] + ([torch.float16, torch.bfloat16] if args.device == "cuda" else [])
    lines = [f"backends: {({k: v[1] for k, v in live.items()})}", "", f"## Correctness on {where}"]
    table, ok = check_correctness(backends, args.device, sz, dtypes)
    lines += table
    lines += ["", f"## Timing on {where} (median ms), compulsory bytes vs a device-to-device copy"]
    # Triton on CPU tensors is its interpreter: correct, but its speed means nothing
    lines += timings([b for b in backends if args.device == "cuda" or b != "triton"], args.device, sz)
    lines += ["", f"torch {torch.__version__}, {where}; correctness {'PASSED' if ok else 'FAILED'}"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
