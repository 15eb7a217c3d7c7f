"""GPU check of udd_fast.ops, for a machine with CUDA: `python bench/gpu_check.py` (after
`pip install --no-build-isolation -e ".[test]"` so the CUDA extension is built). Covers crop_resize
and diff_augment (Kernels I) and response_map, region_mask and cfc_loss (Kernels II).

1. Correctness on the device: every live backend (triton, cuda, torch) against the reference,
   forward and backward, float32 (and float16/bfloat16 forward vs an fp32 reference).
2. Timing with torch.cuda.Event at the CIFAR-10 loop shapes (IPC 1/10/50): per op and backend,
   forward and forward+backward, vs torch eager (the reference).
3. Compulsory bytes of each op (inputs read once + outputs written once, forward only) and the time
   of a same-size device-to-device copy (torch.empty_like(buf).copy_(buf)); targets: faster than
   eager, and within 2x of the copy at IPC 10 and 50 (CIFAR-100 IPC 10 for the UDD ops too).
Prints markdown tables to paste into bench/RESULTS.md."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from udd_fast import ops  # noqa: E402
from udd_fast.augment import Strategy, diff_augment_ref, sample_params  # noqa: E402
from udd_fast.cfc import cfc_loss_ref  # noqa: E402
from udd_fast.decode import crop_resize_ref, decode_plan  # noqa: E402
from udd_fast.regions import (region_mask_ref, response_map_ref, usage_entropy_ref, window_grid,  # noqa: E402
                              window_pixel_masks, window_scores_ref)

K, C, SIZE, FACTOR = 10, 3, 32, 2
DEV = "cuda"
# UDD ops: proxy feature map 128x4x4, tile 16, matching features 2048-d, jitter chunk 32 x 9 x 4
CH, FH, TILE, D, CHUNK, DRAWS = 128, 4, 16, 2048, 32, 4
UDD_SETS = [(10, 1), (10, 10), (10, 50), (100, 1), (100, 10)]  # (K, IPC)


def cuda_time(fn, reps=50, warmup=5):
    """Median ms of fn() by CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def copy_time(nbytes):
    buf = torch.empty(max(1, nbytes // 4), dtype=torch.float32, device=DEV)
    return cuda_time(lambda: torch.empty_like(buf).copy_(buf))


def crop_case(ipc, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(K * ipc, C, SIZE, SIZE, generator=g).to(DEV, dtype)
    src, boxes = decode_plan(K * ipc, SIZE, FACTOR, DEV)
    return images, src, boxes


def aug_case(kind, ipc, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    if kind == "net":
        s = Strategy.parse("color_crop")
        x = torch.randn(64, C, SIZE, SIZE, generator=g).to(DEV, dtype)
        return x, sample_params(torch.arange(64), s, SIZE, op_key=7).to(DEV), s, None
    s = Strategy.parse("color_crop_cutout")
    per = 64 if kind == "real" else min(FACTOR * FACTOR * ipc, 128)
    x = torch.randn(K * per, C, SIZE, SIZE, generator=g).to(DEV, dtype)
    return x, sample_params(torch.arange(K), s, SIZE).to(DEV), s, torch.arange(K, device=DEV).repeat_interleave(per)


def check_correctness(backends):
    rows = []
    g = torch.Generator().manual_seed(2)
    for name in backends:
        with ops.use_backend(name):
            for dtype, tol in ((torch.float32, 2e-5), (torch.float16, 1e-2), (torch.bfloat16, 6e-2)):
                # crop_resize: formations plus random boxes into the padding
                images, src, boxes = crop_case(3, dtype)
                extra = torch.tensor([[0, 0, 1, 1], [31, 31, 33, 34], [5, 7, 30, 33]], device=DEV)
                src = torch.cat([src, torch.tensor([0, 1, 2], device=DEV)])
                boxes = torch.cat([boxes, extra])
                x = images.clone().requires_grad_(True)
                xr = images.float().clone().requires_grad_(True)
                out, ref = ops.crop_resize(x, src, boxes, (SIZE, SIZE)), crop_resize_ref(xr, src, boxes, (SIZE, SIZE))
                gr = torch.randn_like(ref)
                out.backward(gr.to(dtype))
                ref.backward(gr)
                e_f = float((out.float() - ref).abs().max())
                e_b = float((x.grad.float() - xr.grad).abs().max() / max(1.0, float(xr.grad.abs().max())))
                rows.append((name, "crop_resize", str(dtype), e_f, e_b, e_f <= tol and e_b <= 4 * tol))
                for strat in ("color_crop_cutout", "color_crop_cutout_flip_scale_rotate", "color_crop_scale_rotate"):
                    s = Strategy.parse(strat)
                    xx = torch.randn(40, C, 29, 29, generator=g).to(DEV, dtype)
                    p = sample_params(torch.randint(0, 2 ** 62, (40,), generator=g), s, 29).to(DEV)
                    x = xx.clone().requires_grad_(True)
                    xr = xx.float().clone().requires_grad_(True)
                    out, ref = ops.diff_augment(x, p, s), diff_augment_ref(xr, p, s)
                    gr = torch.randn_like(ref)
                    out.backward(gr.to(dtype))
                    ref.backward(gr)
                    sc = max(1.0, float(ref.detach().abs().max()))
                    e_f = float((out.float() - ref).abs().max()) / sc
                    e_b = float((x.grad.float() - xr.grad).abs().max() / max(1.0, float(xr.grad.abs().max())))
                    rows.append((name, f"diff_augment {strat}", str(dtype), e_f, e_b, e_f <= tol and e_b <= 2 * tol))
    print("## Correctness on", torch.cuda.get_device_name())
    print("| backend | op | dtype | max fwd err | max bwd err (rel) | ok |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2e} | {r[4]:.2e} | {'yes' if r[5] else '**NO**'} |")
    return all(r[5] for r in rows)


def timings(backends):
    cases = []
    for ipc in (1, 10, 50):
        images, src, boxes = crop_case(ipc)
        nbytes = images.numel() * 4 + src.numel() * 8 + boxes.numel() * 8 + src.numel() * C * SIZE * SIZE * 4
        cases.append((f"crop_resize IPC{ipc} {K * ipc}->{src.numel()}", nbytes, images,
                      lambda x, s=src, b=boxes: ops.crop_resize(x, s, b, (SIZE, SIZE))))
    for kind, ipc in (("real", 10), ("syn", 1), ("syn", 10), ("syn", 50), ("net", 10)):
        x, p, s, idx = aug_case(kind, ipc)
        nbytes = 2 * x.numel() * 4 + p.numel() * 4 + (idx.numel() * 8 if idx is not None else 0)
        label = {"real": "real", "syn": f"syn IPC{ipc}", "net": "net-update"}[kind]
        cases.append((f"diff_augment {label} N={x.shape[0]} {s}", nbytes, x,
                      lambda t, p=p, s=s, i=idx: ops.diff_augment(t, p, s, i)))
    print("\n## Timing (median ms, torch.cuda.Event), bytes vs a device-to-device copy")
    head = ["case", "MB", "copy ms"] + [f"{b} fwd" for b in backends] + [f"{b} fwd+bwd" for b in backends]
    head += [f"eager/{b} fwd" for b in backends if b != "torch"] + [f"{b}/copy fwd" for b in backends if b != "torch"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for label, nbytes, x, fn in cases:
        fwd, both = {}, {}
        leaf = x.clone().requires_grad_(True)
        grad = torch.randn_like(fn(x))
        for b in backends:
            with ops.use_backend(b):
                with torch.no_grad():
                    fwd[b] = cuda_time(lambda: fn(x))
                both[b] = cuda_time(lambda: fn(leaf).backward(grad))
        cp = copy_time(nbytes)
        cells = [label, f"{nbytes / 1e6:.2f}", f"{cp:.4f}"] + [f"{fwd[b]:.4f}" for b in backends]
        cells += [f"{both[b]:.4f}" for b in backends]
        cells += [f"{fwd['torch'] / fwd[b]:.1f}x" for b in backends if b != "torch"]
        cells += [f"{fwd[b] / cp:.2f}x" for b in backends if b != "torch"]
        print("| " + " | ".join(cells) + " |")


def response_case(k, ipc, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    n = k * ipc * 4
    fmap = torch.randn(n, CH, FH, FH, generator=g).to(DEV, dtype)
    head = (torch.randn(k, CH * FH * FH, generator=g) / 40).to(DEV, dtype)
    return fmap, head, torch.arange(k, device=DEV).repeat_interleave(ipc * 4), window_grid(TILE, 0.5).to(DEV)


def region_case(dtype=torch.float32):
    g = torch.Generator().manual_seed(4)
    x = torch.rand(CHUNK, C, SIZE, SIZE, generator=g).to(DEV, dtype)
    masks = window_pixel_masks(window_grid(TILE, 0.5), TILE, SIZE).to(DEV)
    noise = (torch.randn(CHUNK, 9, DRAWS, C, SIZE, SIZE, generator=g) * 0.2).to(DEV, dtype)
    mean = torch.tensor([0.4914, 0.4822, 0.4465], device=DEV, dtype=dtype)
    std = torch.tensor([0.2023, 0.1994, 0.2010], device=DEV, dtype=dtype)
    return x, masks, noise, mean, std


def cfc_case(k, ipc, dtype=torch.float32):
    g = torch.Generator().manual_seed(5)
    per = min(4 * ipc * 2, 128)
    feats = torch.randn(k * per, D, generator=g).relu().to(DEV, dtype)
    protos = torch.nn.functional.normalize(torch.randn(k, D, generator=g).relu(), dim=1).to(DEV, dtype)
    return feats, torch.arange(k, device=DEV).repeat_interleave(per), protos


def check_correctness_udd(backends):
    """response_map, region_mask (forward) and cfc_loss (forward and backward) against the references."""
    rows = []
    for name in backends:
        with ops.use_backend(name):
            for dtype, tol in ((torch.float32, 2e-5), (torch.float16, 1e-2), (torch.bfloat16, 6e-2)):
                fmap, head, labels, windows = response_case(100, 1, dtype)
                R, sc, ue = ops.response_map(fmap, head, labels, TILE, windows)
                Rr = response_map_ref(fmap.float(), head.float(), labels)
                scale = max(1.0, float(Rr.abs().max()))
                e = max(float((R.float() - Rr).abs().max()),
                        float((sc.float() - window_scores_ref(Rr, TILE, windows)).abs().max()))
                e_ue = float((ue.float() - usage_entropy_ref(R.float())).abs().max())
                rows.append((name, "response_map", str(dtype), e / scale, e_ue, e <= tol * scale and e_ue <= 10 * tol))
                x, masks, noise, mean, std = region_case(dtype)
                out = ops.region_mask(x, masks, noise, mean, std)
                ref = region_mask_ref(x.float(), masks, noise.float(), mean.float(), std.float())
                e = float((out.float() - ref).abs().max()) / float(ref.abs().max())
                rows.append((name, "region_mask", str(dtype), e, 0.0, e <= tol))
                for k, ipc in ((10, 10), (100, 1)):
                    feats, labels, protos = cfc_case(k, ipc, dtype)
                    f = feats.clone().requires_grad_(True)
                    fr = feats.float().clone().requires_grad_(True)
                    out, ref = ops.cfc_loss(f, labels, protos, 0.1), cfc_loss_ref(fr, labels, protos.float(), 0.1)
                    out.backward()
                    ref.backward()
                    e_f = float((out.detach().float() - ref.detach()).abs()) / max(1.0, float(ref.detach().abs()))
                    e_b = float((f.grad.float() - fr.grad).abs().max() / max(1e-3, float(fr.grad.abs().max())))
                    rows.append((name, f"cfc_loss K{k} n={feats.shape[0]}", str(dtype), e_f, e_b,
                                 e_f <= tol and e_b <= 4 * tol))
    print("\n## Correctness of the UDD ops on", torch.cuda.get_device_name())
    print("| backend | op | dtype | max fwd err (rel) | UE err / bwd err (rel) | ok |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2e} | {r[4]:.2e} | {'yes' if r[5] else '**NO**'} |")
    return all(r[5] for r in rows)


def timings_udd(backends):
    """Forward (and for cfc_loss forward+backward) at the loop's shapes; bytes as for the other ops."""
    cases = []  # (label, bytes, fwd fn, fwd+bwd fn or None)
    for k, ipc in UDD_SETS:
        fmap, head, labels, windows = response_case(k, ipc)
        n = fmap.shape[0]
        nbytes = fmap.numel() * 4 + head.numel() * 4 + n * 8 + n * (FH * FH + 9 + 1) * 4
        cases.append((f"response_map K{k} IPC{ipc} N={n}", nbytes,
                      lambda f=fmap, h=head, y=labels, w=windows: ops.response_map(f, h, y, TILE, w), None))
    x, masks, noise, mean, std = region_case()
    nbytes = x.numel() * 4 + masks.numel() + 2 * noise.numel() * 4
    cases.append((f"region_mask chunk {CHUNK}x9x{DRAWS}", nbytes, lambda: ops.region_mask(x, masks, noise, mean, std),
                  None))
    for k, ipc in UDD_SETS:
        feats, labels, protos = cfc_case(k, ipc)
        nbytes = feats.numel() * 4 + protos.numel() * 4 + labels.numel() * 8 + 4
        leaf = feats.clone().requires_grad_(True)
        cases.append((f"cfc_loss K{k} IPC{ipc} n={feats.shape[0]}", nbytes,
                      lambda f=feats, y=labels, p=protos: ops.cfc_loss(f, y, p, 0.1),
                      lambda f=leaf, y=labels, p=protos: ops.cfc_loss(f, y, p, 0.1).backward()))
    print("\n## Timing of the UDD ops (median ms, torch.cuda.Event), bytes vs a device-to-device copy")
    head = ["case", "MB", "copy ms"] + [f"{b} fwd" for b in backends] + [f"{b} fwd+bwd" for b in backends]
    head += [f"eager/{b} fwd" for b in backends if b != "torch"] + [f"{b}/copy fwd" for b in backends if b != "torch"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for label, nbytes, fwd_fn, both_fn in cases:
        fwd, both = {}, {}
        for b in backends:
            with ops.use_backend(b):
                with torch.no_grad():
                    fwd[b] = cuda_time(fwd_fn)
                both[b] = cuda_time(both_fn) if both_fn else None
        cp = copy_time(nbytes)
        cells = [label, f"{nbytes / 1e6:.2f}", f"{cp:.4f}"] + [f"{fwd[b]:.4f}" for b in backends]
        cells += [f"{both[b]:.4f}" if both[b] is not None else "-" for b in backends]
        cells += [f"{fwd['torch'] / fwd[b]:.1f}x" for b in backends if b != "torch"]
        cells += [f"{fwd[b] / cp:.2f}x" for b in backends if b != "torch"]
        print("| " + " | ".join(cells) + " |")


def main():
    if not torch.cuda.is_available():
        sys.exit("gpu_check.py needs a CUDA device")
    live = ops.available_backends(reasons=True)
    print("backends:", {k: v[1] for k, v in live.items()})
    backends = ["torch"] + [b for b in ("triton", "cuda") if live[b][0]]
    ok = check_correctness(backends)
    ok = check_correctness_udd(backends) and ok
    timings(backends)
    timings_udd(backends)
    print(f"\ntorch {torch.__version__}, {torch.cuda.get_device_name()}; correctness {'PASSED' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
