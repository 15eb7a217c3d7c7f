"""Time of one evaluation (IDC's protocol, 5 runs of the ConvNet) with its runs trained one by one and trained
together as one grouped model (--eval-group off / on), side by side in one process, alternating, on real data.

    python bench/eval_timing.py --data-dir DIR --device cpu [--dataset cifar10] [--ipc 10] [--factor 2] [--epochs 30]

The training set is what a set of IPC images per class at the factor decodes to (ipc x factor^2 real training
images per class: the cost depends on their number, not their content); the test set is the first 2000 test
images (--test), tested at IDC's 4 validations. --dataset mnist for a machine that has MNIST alone (the GPU session). Prints the median seconds of each and
their ratio."""
import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from udd_fast.config import build_config  # noqa: E402
from udd_fast.data import ArrayDataset, RealData, load_dataset  # noqa: E402
from udd_fast.protocol import train_and_test  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dataset", default="cifar10", choices=("cifar10", "mnist"))
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--factor", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--test", type=int, default=2000, help="test images (default 2000; the dry run's tiny: fewer)")
    a = p.parse_args(argv)
    ds = load_dataset(a.dataset, a.data_dir, download=False)
    per = a.ipc * a.factor ** 2
    idx = np.concatenate([np.flatnonzero(ds.train_labels == c)[:per] for c in range(10)])
    data = RealData(ArrayDataset(ds.info, ds.train_images[idx], ds.train_labels[idx], ds.test_images[:a.test],
                                 ds.test_labels[:a.test]), a.device)
    x = torch.from_numpy(ds.train_images[idx]).float() / 255.0
    y = torch.from_numpy(ds.train_labels[idx]).long()
    size = ds.info.size
    ev = dataclasses.replace(build_config(a.dataset, a.ipc, "paper", size, size, factor=a.factor).eval,
                             eval_runs=a.runs, eval_epochs=a.epochs)
    times = {"off": [], "on": []}
    for _ in range(a.rounds):
        for mode in ("off", "on"):
            if a.device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = train_and_test(x, y, data, dataclasses.replace(ev, eval_group=mode), seed=0, progress=False)
            if a.device == "cuda":
                torch.cuda.synchronize()
            times[mode].append(time.perf_counter() - t0)
            assert res["grouped"] == (mode == "on")
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    where = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"## Evaluation on {a.dataset}, {a.runs} runs of the ConvNet, {len(idx)} training images ({a.ipc} IPC at factor {a.factor}), "
          f"{a.epochs} epochs, batch {ev.eval_batch}, {where}, torch {torch.__version__}\n")
    print("| runs trained | seconds (median of %d) |\n|---|---|" % a.rounds)
    print(f"| one by one (--eval-group off) | {off:.1f} |\n| together, grouped (on) | {on:.1f} |\n")
    print(f"grouped / one by one: {on / off:.2f} (speedup {off / on:.2f}x); all times: {times}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
