"""What training the matching networks ahead (--trajectory-batch N) does to the network update: the time
per network and inner iteration of its update (n_data real images in batches), interleaved (N = 1, the
engine's own step) against N networks trained together as one grouped model, at CIFAR-10's paper shapes
(3x32x32, ConvNet-3 width 128, batches of 64, 2000 images per update) on random pixels (the update does
not depend on the synthetic set, nor its cost on the images per class).

    python bench/trajectory_timing.py --device cpu --ahead 1 2 4 [--compile on off] [--out t.md]
    python bench/trajectory_timing.py --device cpu --tiny     # what gpu_session.py --dry-run runs

Each setting gets its own engine and one warm-up inner iteration (which also compiles), then the median
of --inner timed inner iterations (synchronized)."""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop_timing import random_set  # noqa: E402
from udd_fast.config import build_config  # noqa: E402
from udd_fast.data import RealData  # noqa: E402
from udd_fast.engine import Engine  # noqa: E402


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def per_network_ms(data, device, ahead: int, compile_net: str, inner: int, **over):
    """Median ms per network of one inner iteration's network update, over `inner` timed ones."""
    precision = "tf32" if device == "cuda" else "fp32"
    cfg = build_config("cifar10", 1, "paper", data.info.size, 32, device=device, form="sequential",
                       precision=precision, cuda_graphs="off", compile=compile_net, trajectory_batch=str(ahead),
                       iterations=ahead, **over)
    d = Engine(cfg, data)
    times = []
    with d.precision():
        net, opt = d.start_network(0)
        for i in range(inner + 1):
            _sync(device)
            t0 = time.perf_counter()
            if ahead == 1:
                d.network_update(net, opt)
            else:
                d.trajectories.record(i)
                d.trajectories.train(i)
            _sync(device)
            times.append((time.perf_counter() - t0) * 1e3 / ahead)
    return statistics.median(times[1:])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--ahead", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--compile", nargs="+", default=["on"], choices=("on", "off"))
    p.add_argument("--inner", type=int, default=3, help="timed inner iterations per setting (after one warm-up)")
    p.add_argument("--tiny", action="store_true", help="16 px, 3 classes, small batches, eager (a CPU dry run)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("trajectory_timing.py --device cuda needs a CUDA device")
    data, over = RealData(random_set(5000), a.device), {}
    if a.tiny:
        data, over, a.compile, a.inner = RealData(random_set(60, size=16, k=3), a.device), \
            dict(batch_real=4, n_data=8, net_width=16), ["off"], 1
    lines = [f"network update per network and inner iteration, CIFAR-10 {'tiny' if a.tiny else 'paper'} shapes, {a.device}, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {a.inner}",
             "", "| compile | N ahead | ms per network | vs N = 1 |", "|---|---|---|---|"]
    for comp in a.compile:
        base = None
        for n in a.ahead:
            ms = per_network_ms(data, a.device, n, comp, a.inner, **over)
            base = base or ms
            lines.append(f"| {comp} | {n} | {ms:.0f} | {base / ms:.2f}x |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
