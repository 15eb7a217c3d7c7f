"""Time per inner iteration of the distillation loop, in each mode the engine has, at CIFAR-10's
shapes (3x32x32, K=10, the paper preset's network update of 2000 images) on random pixels: the
loop's cost does not depend on what the pixels show.

    python bench/loop_timing.py --device cuda --ipc 1 10 50 [--out loop.md]
    python bench/loop_timing.py --device cpu --tiny          # what gpu_session.py --dry-run runs

One inner iteration = the matching step (all classes) + the network update; each is timed apart
(synchronized), after one warm-up inner iteration, median over --inner iterations."""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from udd_fast.config import FORMS, PRECISIONS, build_config  # noqa: E402
from udd_fast.data import DATASETS, ArrayDataset, DatasetInfo, RealData  # noqa: E402
from udd_fast.engine import Distiller  # noqa: E402
from udd_fast.train import make_sgd  # noqa: E402


def modes(device):
    """Every (form, precision) the engine runs; TF32 exists on CUDA only (on the CPU it equals fp32)."""
    precisions = [p for p in PRECISIONS if device == "cuda" or p != "tf32"]
    return [(f, p) for f in FORMS for p in precisions]


def random_cifar10(n_train, size=32, k=10, seed=0):
    """Random uint8 pixels with CIFAR-10's facts (balanced labels)."""
    spec = DATASETS["cifar10"]
    info = DatasetInfo(name="cifar10", channels=3, size=size, num_classes=k, mean=spec["mean"], std=spec["std"],
                       class_names=tuple(str(c) for c in range(k)), size_base=32)
    rs = np.random.default_rng(seed)
    x = rs.integers(0, 256, (n_train, 3, size, size), dtype=np.uint8)
    y = np.arange(n_train, dtype=np.int64) % k
    return ArrayDataset(info, x, y, x[:k], y[:k])


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_inner(data, ipc, form, precision, device, inner, **over):
    """(median ms per matching step, per network update) over `inner` inner iterations."""
    cfg = build_config("cifar10", ipc, "paper", data.info.size, 32, device=device, form=form, precision=precision,
                       **over)
    d = Distiller(cfg, data)
    net = d.new_network(0)
    opt = make_sgd(net, cfg.net.lr_net, cfg.net.mom_net, cfg.net.wd_net)
    d.boundary(0)
    match, update = [], []
    for i in range(inner + 1):  # the first is a warm-up
        _sync(device)
        t0 = time.perf_counter()
        d.match(net, 0, i % cfg.match.inner_loop)
        _sync(device)
        t1 = time.perf_counter()
        d.network_update(net, opt)
        _sync(device)
        t2 = time.perf_counter()
        if i:
            match.append((t1 - t0) * 1e3)
            update.append((t2 - t1) * 1e3)
    return statistics.median(match), statistics.median(update)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    p.add_argument("--inner", type=int, default=5, help="timed inner iterations per mode (after one warm-up)")
    p.add_argument("--tiny", action="store_true", help="16 px, 3 classes, IPC 1, small batches (a CPU dry run)")
    p.add_argument("--out", default=None, help="also write the markdown table here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("loop_timing.py --device cuda needs a CUDA device")
    if args.tiny:
        data, ipcs, over, inner = RealData(random_cifar10(60, size=16, k=3), args.device), [1], \
            dict(batch_real=4, n_data=8, net_width=16), 1
    else:
        data, ipcs, over, inner = RealData(random_cifar10(50000), args.device), args.ipc, {}, args.inner
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    lines = [f"## Loop time per inner iteration on {where} (median of {inner}, ms; "
             f"{data.info.num_classes} classes, {data.info.size} px, network update of "
             f"{over.get('n_data', 2000)} images)", "",
             "| IPC | form | precision | matching | network update | inner iteration |", "|---|---|---|---|---|---|"]
    for ipc in ipcs:
        for form, precision in modes(args.device):
            m, u = time_inner(data, ipc, form, precision, args.device, inner, **over)
            lines.append(f"| {ipc} | {form} | {precision} | {m:.2f} | {u:.2f} | {m + u:.2f} |")
            print(lines[-1], flush=True)
    lines += ["", f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {where}"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
