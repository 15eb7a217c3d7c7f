"""diff_augment per backend at the CIFAR-10 loop's batches, forward and forward+backward: the real
batch (K*64 reals, per-class siamese params), the synthetic batch at IPC 1/10/50 (K*min(4*IPC, 128)
decoded images, same params), both 'color_crop_cutout', and the per-sample network-update batch (64,
'color_crop'); at 64 px the real batch, the synthetic batch at IPC 1/10 and the network-update
batch, at 128 and 224 px the synthetic batch at IPC 1 and the network-update batch.

    pytest bench/test_bench_diff_augment.py --benchmark-only [--benchmark-json=bench.json]

Backends and timing: bench/common.py."""
import pytest
import torch

from common import BACKENDS, C, FACTOR, IDS, K, SIZE, run, side_id, side_label
from udd_fast import ops
from udd_fast.augment import Strategy, sample_params

BATCH_REAL, BATCH_SYN_MAX, BATCH_NET = 64, 128, 64


def diff_augment_case(kind, ipc, side, device):
    """real: K*64 reals, per-class siamese params; syn: K*min(4*IPC, 128) decoded synthetic images,
    same params; net: the per-sample network-update batch of 64, 'color_crop'."""
    g = torch.Generator().manual_seed(1)
    if kind == "net":
        strategy = Strategy.parse("color_crop")
        x = torch.randn(BATCH_NET, C, side, side, generator=g)
        params = sample_params(torch.arange(BATCH_NET), strategy, side, op_key=7)
        return x.to(device), params.to(device), strategy, None
    strategy = Strategy.parse("color_crop_cutout")
    per_class = BATCH_REAL if kind == "real" else min(FACTOR * FACTOR * ipc, BATCH_SYN_MAX)
    x = torch.randn(K * per_class, C, side, side, generator=g)
    params = sample_params(torch.arange(K), strategy, side)
    index = torch.arange(K).repeat_interleave(per_class)
    return x.to(device), params.to(device), strategy, index.to(device)


AUG_CASES = [(SIZE, "real", 10), (SIZE, "syn", 1), (SIZE, "syn", 10), (SIZE, "syn", 50), (SIZE, "net", 10),
             (64, "real", 10), (64, "syn", 1), (64, "syn", 10), (64, "net", 10),
             (128, "syn", 1), (128, "net", 10), (224, "syn", 1), (224, "net", 10)]  # (side, kind, IPC)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("side,kind,ipc", AUG_CASES,
                         ids=[side_id(s, f"{k}-ipc{i}" if k == "syn" else k) for s, k, i in AUG_CASES])
@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_diff_augment(benchmark, backend, device, side, kind, ipc, mode):
    x, params, strategy, index = diff_augment_case(kind, ipc, side, device)
    name = {"real": "real batch", "syn": f"syn batch IPC{ipc}", "net": "net-update batch"}[kind]
    benchmark.group = f"diff_augment{side_label(side)} {name} N={x.shape[0]} {strategy} {mode}"
    if mode == "fwd":
        fn = lambda: ops.diff_augment(x, params, strategy, index)  # noqa: E731
    else:
        leaf = x.clone().requires_grad_(True)
        grad = torch.randn_like(x)

        def fn():
            leaf.grad = None
            ops.diff_augment(leaf, params, strategy, index).backward(grad)
    run(benchmark, backend, device, fn, rounds=10 if x.numel() > 8e6 else 20)
