"""response_map per backend on all N = K*IPC*4 formations of the set (region search, mUE): CIFAR-10
(K=10, IPC 1/10/50) and CIFAR-100 (K=100, IPC 1/10), factor 2, proxy feature map 128x4x4, tile 16,
the 9 windows; forward only.

    pytest bench/test_bench_response_map.py --benchmark-only [--benchmark-json=bench.json]

Backends and timing: bench/common.py."""
import pytest
import torch

from common import BACKENDS, IDS, SET_IDS, SETS, TILE, run
from udd_fast import ops
from udd_fast.region_search import window_grid

CH, FH = 128, 4  # the proxy's feature map: CH x FH x FH


def response_case(k, ipc, device):
    g = torch.Generator().manual_seed(0)
    n = k * ipc * 4
    fmap = torch.randn(n, CH, FH, FH, generator=g)
    head = torch.randn(k, CH * FH * FH, generator=g) / 40
    labels = torch.arange(k).repeat_interleave(ipc * 4)
    return fmap.to(device), head.to(device), labels.to(device), window_grid(TILE, 0.5).to(device)


@pytest.mark.parametrize("k,ipc", SETS, ids=SET_IDS)
@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_response_map(benchmark, backend, device, k, ipc):
    fmap, head, labels, windows = response_case(k, ipc, device)
    benchmark.group = f"response_map K{k} IPC{ipc} N={fmap.shape[0]} {CH}x{FH}x{FH} tile {TILE}"
    with torch.no_grad():
        run(benchmark, backend, device, lambda: ops.response_map(fmap, head, labels, TILE, windows),
            rounds=10 if fmap.shape[0] >= 2000 else 20)
