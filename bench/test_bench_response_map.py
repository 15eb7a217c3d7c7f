"""response_map per backend on all N = K*IPC*4 formations of the set (region search, mUE): CIFAR-10
(K=10, IPC 1/10/50) and CIFAR-100 (K=100, IPC 1/10), factor 2, proxy feature map 128x4x4, tile 16,
the 9 windows; at 64, 128 and 224 px (tile side/2) the proxy's map there (ConvNet by resolution:
4x4, 4x4, 3x3) at K=10 IPC 1/10, Tiny-ImageNet's K=200 at 64 px and K=100 at 224 px, and ConvNet-3's
28x28 map at 224 px (the widest the kernels take); forward only.

    pytest bench/test_bench_response_map.py --benchmark-only [--benchmark-json=bench.json]

Backends and timing: bench/common.py."""
import pytest
import torch

from common import BACKENDS, FACTOR, IDS, SETS, SIZE, convnet_map, run, side_id, side_label
from udd_fast import ops
from udd_fast.region_search import window_grid

# (side, K, IPC, ConvNet depth: None = by resolution)
CASES = ([(SIZE, k, i, None) for k, i in SETS]
         + [(64, 10, 1, None), (64, 10, 10, None), (64, 200, 1, None), (128, 10, 1, None), (128, 10, 10, None),
            (224, 10, 1, None), (224, 10, 10, None), (224, 100, 1, None), (224, 10, 10, 3)])


def response_case(side, k, ipc, depth, device):
    g = torch.Generator().manual_seed(0)
    (ch, fh, fw), n, tile = convnet_map(side, depth), k * ipc * 4, side // FACTOR
    fmap = torch.randn(n, ch, fh, fw, generator=g)
    head = torch.randn(k, ch * fh * fw, generator=g) / (10 * fh)  # / 40 at 32 px
    labels = torch.arange(k).repeat_interleave(ipc * 4)
    return fmap.to(device), head.to(device), labels.to(device), tile, window_grid(tile, 0.5).to(device)


@pytest.mark.parametrize("side,k,ipc,depth", CASES,
                         ids=[side_id(s, f"K{k}-ipc{i}" + (f"-convnet{d}" if d else "")) for s, k, i, d in CASES])
@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_response_map(benchmark, backend, device, side, k, ipc, depth):
    fmap, head, labels, tile, windows = response_case(side, k, ipc, depth, device)
    ch, fh, fw = fmap.shape[1:]
    benchmark.group = f"response_map{side_label(side)} K{k} IPC{ipc} N={fmap.shape[0]} {ch}x{fh}x{fw} tile {tile}"
    with torch.no_grad():
        run(benchmark, backend, device, lambda: ops.response_map(fmap, head, labels, tile, windows),
            rounds=10 if fmap.numel() >= 2000 * 128 * 16 else 20)
