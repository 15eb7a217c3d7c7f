"""region_mask per backend on one jitter-policy chunk: 32 samples x 9 windows x 4 draws at 3x32x32
(CIFAR-10, tile 16); at 64, 128 and 224 px (tiles side/2) chunks of 32, 8 and 2 samples (the 64 px
chunk's bytes: 32 samples at 224 px would be 0.7 GB of noise); forward only.

    pytest bench/test_bench_region_mask.py --benchmark-only [--benchmark-json=bench.json]

Backends and timing: bench/common.py."""
import pytest
import torch

from common import BACKENDS, C, IDS, SIDES, SIZE, run, side_id, side_label
from udd_fast import ops
from udd_fast.region_search import window_grid, window_pixel_masks

CHUNK, DRAWS = 32, 4
CASES = [(SIZE, CHUNK)] + [(side, max(1, CHUNK * 64 * 64 // (side * side))) for side in SIDES]  # (side, chunk)


def region_case(side, chunk, device):
    g = torch.Generator().manual_seed(1)
    tile = side // 2
    x = torch.rand(chunk, C, side, side, generator=g)
    masks = window_pixel_masks(window_grid(tile, 0.5), tile, side)
    noise = torch.randn(chunk, 9, DRAWS, C, side, side, generator=g) * 0.2
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2023, 0.1994, 0.2010])
    return [t.to(device) for t in (x, masks, noise, mean, std)]


@pytest.mark.parametrize("side,chunk", CASES, ids=[side_id(s, f"chunk{c}") for s, c in CASES])
@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_region_mask(benchmark, backend, device, side, chunk):
    x, masks, noise, mean, std = region_case(side, chunk, device)
    benchmark.group = f"region_mask{side_label(side)} chunk {chunk} x 9 windows x {DRAWS} draws {C}x{side}x{side}"
    with torch.no_grad():
        run(benchmark, backend, device, lambda: ops.region_mask(x, masks, noise, mean, std), rounds=10)
