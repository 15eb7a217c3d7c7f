"""Benchmarks of the UDD ops of udd_fast.ops (response_map, region_mask, cfc_loss) per backend at the
shapes the distillation loop uses: CIFAR-10 (K=10, IPC 1/10/50) and CIFAR-100 (K=100, IPC 1/10),
factor 2, proxy feature map 128x4x4, tile 16, matching features 2048-d.

    pytest bench/test_bench_ops2.py --benchmark-only [--benchmark-json=bench2.json]

- response_map: all N = K*IPC*4 formations of the set (region search / mUE), forward only.
- region_mask: one chunk of 32 samples x 9 windows x 4 draws at 3x32x32 (the jitter policy), forward.
- cfc_loss: the synthetic batch, n = K * min(4*IPC*2, 128) (formations + region views, subsampled to
  128 per class: K*8 at IPC 1, K*80 at IPC 10, K*128 at IPC 50), D = 2048; fwd and fwd+bwd.
Backends and timing as in bench/test_bench_ops.py (torch and cpp on the CPU; torch, triton and cuda
on a GPU when there is one)."""
import pytest
import torch
import torch.nn.functional as F

from test_bench_ops import BACKENDS, IDS, _run
from udd_fast import ops
from udd_fast.regions import window_grid, window_pixel_masks

CH, FH, TILE, SIZE, C, D, CHUNK, DRAWS = 128, 4, 16, 32, 3, 2048, 32, 4
SETS = [(10, 1), (10, 10), (10, 50), (100, 1), (100, 10)]  # (K, IPC)
SET_IDS = [f"K{k}-ipc{i}" for k, i in SETS]


def response_case(k, ipc, device):
    g = torch.Generator().manual_seed(0)
    n = k * ipc * 4
    fmap = torch.randn(n, CH, FH, FH, generator=g)
    head = torch.randn(k, CH * FH * FH, generator=g) / 40
    labels = torch.arange(k).repeat_interleave(ipc * 4)
    return fmap.to(device), head.to(device), labels.to(device), window_grid(TILE, 0.5).to(device)


def region_case(device):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(CHUNK, C, SIZE, SIZE, generator=g)
    masks = window_pixel_masks(window_grid(TILE, 0.5), TILE, SIZE)
    noise = torch.randn(CHUNK, 9, DRAWS, C, SIZE, SIZE, generator=g) * 0.2
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2023, 0.1994, 0.2010])
    return [t.to(device) for t in (x, masks, noise, mean, std)]


def cfc_case(k, ipc, device):
    g = torch.Generator().manual_seed(2)
    per_class = min(4 * ipc * 2, 128)
    feats = torch.randn(k * per_class, D, generator=g).relu()
    protos = F.normalize(torch.randn(k, D, generator=g).relu(), dim=1)
    labels = torch.arange(k).repeat_interleave(per_class)
    return feats.to(device), labels.to(device), protos.to(device)


@pytest.mark.parametrize("k,ipc", SETS, ids=SET_IDS)
@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_response_map(benchmark, backend, device, k, ipc):
    fmap, head, labels, windows = response_case(k, ipc, device)
    benchmark.group = f"response_map K{k} IPC{ipc} N={fmap.shape[0]} {CH}x{FH}x{FH} tile {TILE}"
    with torch.no_grad():
        _run(benchmark, backend, device, lambda: ops.response_map(fmap, head, labels, TILE, windows),
             rounds=10 if fmap.shape[0] >= 2000 else 20)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_region_mask(benchmark, backend, device):
    x, masks, noise, mean, std = region_case(device)
    benchmark.group = f"region_mask chunk {CHUNK} x 9 windows x {DRAWS} draws {C}x{SIZE}x{SIZE}"
    with torch.no_grad():
        _run(benchmark, backend, device, lambda: ops.region_mask(x, masks, noise, mean, std), rounds=10)


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
    _run(benchmark, backend, device, fn, rounds=5 if feats.shape[0] >= 4000 else 10)
