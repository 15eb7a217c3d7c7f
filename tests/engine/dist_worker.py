"""One rank of a distributed float64 distillation, started by tests/engine/test_distributed.py with the
environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

Usage: python tests/engine/dist_worker.py DATA_DIR METHOD OUT_DIR [TRAJECTORY_BATCH]
Each rank saves rank<r>.pt: its trace (the images at every gradient point of its classes), the merged
final state, and the payload bytes it handed to collectives.
"""
import sys

import torch

from udd_fast import distributed
from udd_fast.config import build_config
from udd_fast.data import RealData, load_dataset
from udd_fast.engine import Engine
from udd_fast.models import ConvNet


def small_config(method: str, trajectory_batch: str = "auto"):
    """FashionMNIST (CutMix on in its network updates), float64, a large image lr so the clamp bites,
    network batches of 8 split across ranks, 5 of them per inner iteration (with networks trained ahead:
    every rank trains the whole batches itself)."""
    return build_config("fashionmnist", 2, "smoke", 28, 28, method=method, form="batched", dtype="float64", iterations=3,
                        inner_loop=2, net_width=8, batch_real=8, n_data=40, lr_img=30.0,
                        trajectory_batch=trajectory_batch,
                        cfc_weight=0.5 if method == "udd" else None, policy="auto" if method == "udd" else None)


def run(data_dir, method, comm=None, trajectory_batch="auto"):
    """(Engine after the run, trace events) for one rank (or one process when comm is None)."""
    data = RealData(load_dataset("fashionmnist", data_dir, download=False), "cpu")
    proxy = None
    if method == "udd":  # an untrained, narrow proxy: cheap, and wrong often enough that both policies run
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            proxy = ConvNet(data.info.num_classes, data.info.channels, data.info.size, width=16).double().eval()
    events = []
    d = Engine(small_config(method, trajectory_batch), data, proxy=proxy, comm=comm,
                  trace=lambda ev, o, i, c, rows: events.append((ev, o, i, c, rows)))
    d.iterate()
    return d, events


def main(data_dir, method, out_dir, trajectory_batch="auto"):
    comm = distributed.init("cpu", timeout_s=60)
    d, events = run(data_dir, method, comm, trajectory_batch)
    torch.save({"events": events, "state": d.state(), "bytes": dict(comm.bytes_by_purpose),
                "calls": dict(comm.calls_by_purpose), "classes": comm.classes(d.K), "world": comm.world},
               f"{out_dir}/rank{comm.rank}.pt")
    comm.close(barrier=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
