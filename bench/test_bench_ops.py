"""Benchmarks of udd_fast.ops per backend at the shapes the CIFAR-10 distillation loop uses
(3x32x32, K=10 classes, IPC 1/10/50, factor 2), forward and forward+backward.

    pytest bench/ --benchmark-only [--benchmark-json=bench.json]

Backends: torch (the references) and cpp on the CPU; torch, triton and cuda on the GPU when there
is one (Triton's CPU interpreter is not timed: its speed means nothing). GPU timings synchronize
inside the timed function. Rounds are few so the default run stays under ~3 minutes on 2 cores."""
import pytest
import torch

from udd_fast import ops
from udd_fast.augment import Strategy, sample_params
from udd_fast.decode import decode_plan

K, C, SIZE, FACTOR = 10, 3, 32, 2
BATCH_REAL, BATCH_SYN_MAX, BATCH_NET = 64, 128, 64
GPU = torch.cuda.is_available()


def _backends():
    live = ops.available_backends()
    out = [("torch", "cuda" if GPU else "cpu")]
    if live["cpp"]:
        out.append(("cpp", "cpu"))
    if GPU:
        out += [(b, "cuda") for b in ("triton", "cuda") if live[b]]
    return out


BACKENDS = _backends()
IDS = [f"{b}-{d}" for b, d in BACKENDS]


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _run(benchmark, backend, device, fn, rounds):
    """Time fn() on `backend`, synchronized, a few rounds after one warm-up round."""
    def timed():
        out = fn()
        _sync(device)
        return out

    with ops.use_backend(backend):
        assert ops.resolve(torch.zeros(1, device=device)) == backend
        benchmark.extra_info.update(backend=backend, device=device)
        benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)


def crop_resize_case(ipc, device):
    """Decode all K*IPC stored images into K*IPC*4 formations (the loop decodes all, then subsamples)."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(K * ipc, C, SIZE, SIZE, generator=g).to(device)
    src, boxes = decode_plan(K * ipc, SIZE, FACTOR, device)
    return images, src, boxes


def diff_augment_case(kind, ipc, device):
    """real: K*64 reals, per-class siamese params; syn: K*min(4*IPC, 128) decoded synthetic images,
    same params; net: the per-sample network-update batch of 64, 'color_crop'."""
    g = torch.Generator().manual_seed(1)
    if kind == "net":
        strategy = Strategy.parse("color_crop")
        x = torch.randn(BATCH_NET, C, SIZE, SIZE, generator=g)
        params = sample_params(torch.arange(BATCH_NET), strategy, SIZE, op_key=7)
        return x.to(device), params.to(device), strategy, None
    strategy = Strategy.parse("color_crop_cutout")
    per_class = BATCH_REAL if kind == "real" else min(FACTOR * FACTOR * ipc, BATCH_SYN_MAX)
    x = torch.randn(K * per_class, C, SIZE, SIZE, generator=g)
    params = sample_params(torch.arange(K), strategy, SIZE)
    index = torch.arange(K).repeat_interleave(per_class)
    return x.to(device), params.to(device), strategy, index.to(device)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("ipc", [1, 10, 50])
@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_crop_resize(benchmark, backend, device, ipc, mode):
    images, src, boxes = crop_resize_case(ipc, device)
    benchmark.group = f"crop_resize IPC{ipc} {K * ipc}->{K * ipc * FACTOR ** 2} {mode}"
    if mode == "fwd":
        fn = lambda: ops.crop_resize(images, src, boxes, (SIZE, SIZE))  # noqa: E731
    else:
        leaf = images.clone().requires_grad_(True)
        grad = torch.randn(src.shape[0], C, SIZE, SIZE, device=device)

        def fn():
            leaf.grad = None
            ops.crop_resize(leaf, src, boxes, (SIZE, SIZE)).backward(grad)
    _run(benchmark, backend, device, fn, rounds=10 if ipc == 50 else 20)


AUG_CASES = [("real", 10), ("syn", 1), ("syn", 10), ("syn", 50), ("net", 10)]


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("kind,ipc", AUG_CASES, ids=[f"{k}-ipc{i}" if k == "syn" else k for k, i in AUG_CASES])
@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_diff_augment(benchmark, backend, device, kind, ipc, mode):
    x, params, strategy, index = diff_augment_case(kind, ipc, device)
    name = {"real": "real batch", "syn": f"syn batch IPC{ipc}", "net": "net-update batch"}[kind]
    benchmark.group = f"diff_augment {name} N={x.shape[0]} {strategy} {mode}"
    if mode == "fwd":
        fn = lambda: ops.diff_augment(x, params, strategy, index)  # noqa: E731
    else:
        leaf = x.clone().requires_grad_(True)
        grad = torch.randn_like(x)

        def fn():
            leaf.grad = None
            ops.diff_augment(leaf, params, strategy, index).backward(grad)
    _run(benchmark, backend, device, fn, rounds=20)
