"""cfc_loss per backend on the synthetic batch, n = K * min(4*IPC*2, 128) (formations + region views,
subsampled to 128 per class: K*8 at IPC 1, K*80 at IPC 10, K*128 at IPC 50), D = 2048, tau 0.1:
CIFAR-10 (K=10, IPC 1/10/50) and CIFAR-100 (K=100, IPC 1/10); at 64, 128 and 224 px the matching
networks' widths there: ConvNet by resolution (2048 at 64 and 128 px, 1152 at 224; Tiny-ImageNet's
K=200 at 64 px), ResNetAP-10 (IDC's ImageNet network, 512) at 128 and 224 px, and ConvNet-3's
100352 at 224 px (the widest); forward and forward+backward.

    pytest bench/test_bench_cfc_loss.py --benchmark-only [--benchmark-json=bench.json]

Backends and timing: bench/common.py."""
import math

import pytest
import torch
import torch.nn.functional as F

from common import BACKENDS, IDS, RESNET_AP10_WIDTH, SETS, SIZE, convnet_map, run, side_id, side_label
from udd_fast import ops

# (side, K, IPC, network)
CASES = ([(SIZE, k, i, "convnet") for k, i in SETS]
         + [(64, 10, 1, "convnet"), (64, 10, 10, "convnet"), (64, 200, 1, "convnet"),
            (128, 10, 10, "convnet"), (128, 10, 10, "resnet_ap10"), (128, 100, 1, "resnet_ap10"),
            (224, 10, 10, "convnet"), (224, 10, 10, "resnet_ap10"), (224, 100, 1, "resnet_ap10"),
            (224, 10, 1, "convnet3")])


def width(side, net):
    """The feature width of `net` at an image side (2048 for ConvNet-3 at 32 px)."""
    if net == "resnet_ap10":
        return RESNET_AP10_WIDTH
    return math.prod(convnet_map(side, 3 if net == "convnet3" else None))


def cfc_case(k, ipc, d, device):
    g = torch.Generator().manual_seed(2)
    per_class = min(4 * ipc * 2, 128)
    feats = torch.randn(k * per_class, d, generator=g).relu()
    protos = F.normalize(torch.randn(k, d, generator=g).relu(), dim=1)
    labels = torch.arange(k).repeat_interleave(per_class)
    return feats.to(device), labels.to(device), protos.to(device)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("side,k,ipc,net", CASES,
                         ids=[side_id(s, f"K{k}-ipc{i}" + (f"-{n}" if s != SIZE else "")) for s, k, i, n in CASES])
@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_cfc_loss(benchmark, backend, device, side, k, ipc, net, mode):
    d = width(side, net)
    feats, labels, protos = cfc_case(k, ipc, d, device)
    net_label = "" if side == SIZE else f" {net}"
    benchmark.group = f"cfc_loss{side_label(side)}{net_label} K{k} IPC{ipc} n={feats.shape[0]} D={d} {mode}"
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                return ops.cfc_loss(feats, labels, protos, 0.1)
    else:
        leaf = feats.clone().requires_grad_(True)

        def fn():
            leaf.grad = None
            ops.cfc_loss(leaf, labels, protos, 0.1).backward()
    run(benchmark, backend, device, fn, rounds=5 if feats.numel() >= 4000 * 2048 else 10)
