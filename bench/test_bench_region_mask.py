"""region_mask per backend on one jitter-policy chunk: 32 samples x 9 windows x 4 draws at 3x32x32
(CIFAR-10, tile 16); forward only.

    pytest bench/test_bench_region_mask.py --benchmark-only [--benchmark-json=bench.json]

Backends and timing: bench/common.py."""
import pytest
import torch

from common import BACKENDS, C, IDS, SIZE, TILE, run
from udd_fast import ops
from udd_fast.region_search import window_grid, window_pixel_masks

CHUNK, DRAWS = 32, 4


def region_case(device):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(CHUNK, C, SIZE, SIZE, generator=g)
    masks = window_pixel_masks(window_grid(TILE, 0.5), TILE, SIZE)
    noise = torch.randn(CHUNK, 9, DRAWS, C, SIZE, SIZE, generator=g) * 0.2
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2023, 0.1994, 0.2010])
    return [t.to(device) for t in (x, masks, noise, mean, std)]


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_region_mask(benchmark, backend, device):
    x, masks, noise, mean, std = region_case(device)
    benchmark.group = f"region_mask chunk {CHUNK} x 9 windows x {DRAWS} draws {C}x{SIZE}x{SIZE}"
    with torch.no_grad():
        run(benchmark, backend, device, lambda: ops.region_mask(x, masks, noise, mean, std), rounds=10)
