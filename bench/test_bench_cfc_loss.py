"""cfc_loss per backend on the synthetic batch, n = K * min(4*IPC*2, 128) (formations + region views,
subsampled to 128 per class: K*8 at IPC 1, K*80 at IPC 10, K*128 at IPC 50), D = 2048, tau 0.1:
CIFAR-10 (K=10, IPC 1/10/50) and CIFAR-100 (K=100, IPC 1/10); forward and forward+backward.

    pytest bench/test_bench_cfc_loss.py --benchmark-only [--benchmark-json=bench.json]

Backends and timing: bench/common.py."""
import pytest
import torch
import torch.nn.functional as F

from common import BACKENDS, IDS, SET_IDS, SETS, run
from udd_fast import ops

D = 2048  # ConvNet-3's feature width at 32 px


def cfc_case(k, ipc, device):
    g = torch.Generator().manual_seed(2)
    per_class = min(4 * ipc * 2, 128)
    feats = torch.randn(k * per_class, D, generator=g).relu()
    protos = F.normalize(torch.randn(k, D, generator=g).relu(), dim=1)
    labels = torch.arange(k).repeat_interleave(per_class)
    return feats.to(device), labels.to(device), protos.to(device)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("k,ipc", SETS, ids=SET_IDS)
@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_cfc_loss(benchmark, backend, device, k, ipc, mode):
    feats, labels, protos = cfc_case(k, ipc, device)
    benchmark.group = f"cfc_loss K{k} IPC{ipc} n={feats.shape[0]} D={D} {mode}"
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                return ops.cfc_loss(feats, labels, protos, 0.1)
    else:
        leaf = feats.clone().requires_grad_(True)

        def fn():
            leaf.grad = None
            ops.cfc_loss(leaf, labels, protos, 0.1).backward()
    run(benchmark, backend, device, fn, rounds=5 if feats.shape[0] >= 4000 else 10)
