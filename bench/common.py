"""What the per-op benchmarks share (bench/test_bench_<op>.py): the shapes of the distillation loop,
the backends to time, and the timing itself.

Backends: torch (the references) and cpp on the CPU; torch, triton and cuda on the GPU when there
is one (Triton's CPU interpreter is not timed: its speed means nothing). GPU timings synchronize
inside the timed function. Rounds are few so that a run stays short on 2 cores."""
import torch

from udd_fast import ops

# CIFAR-10: K classes of C x SIZE x SIZE images, factor 2; the UDD ops also at CIFAR-100 (K = 100).
K, C, SIZE, FACTOR = 10, 3, 32, 2
TILE = SIZE // FACTOR  # a formation's tile, 16 stored pixels
SETS = [(10, 1), (10, 10), (10, 50), (100, 1), (100, 10)]  # (K, IPC)
SET_IDS = [f"K{k}-ipc{i}" for k, i in SETS]
GPU = torch.cuda.is_available()


def _backends():
    live = ops.available_backends()
    out = [("torch", "cuda" if GPU else "cpu")]
    if live["cpp"]:
        out.append(("cpp", "cpu"))
    if GPU:
        out += [(b, "cuda") for b in ("triton", "cuda") if live[b]]
    return out


BACKENDS = _backends()  # (backend, device) pairs
IDS = [f"{b}-{d}" for b, d in BACKENDS]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def run(benchmark, backend, device, fn, rounds):
    """Time fn() on `backend`, synchronized, a few rounds after one warm-up round."""
    def timed():
        out = fn()
        sync(device)
        return out

    with ops.use_backend(backend):
        assert ops.resolve(torch.zeros(1, device=device)) == backend
        benchmark.extra_info.update(backend=backend, device=device)
        benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)
