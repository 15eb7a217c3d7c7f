"""crop_resize per backend at the CIFAR-10 loop's decode: all K*IPC stored images into K*IPC*4
formations (the loop decodes all, then subsamples), IPC 1/10/50, forward and forward+backward; and
the same decode of 64 and 128 px images (IPC 1/10) and 224 px (IPC 1).

    pytest bench/test_bench_crop_resize.py --benchmark-only [--benchmark-json=bench.json]

Backends and timing: bench/common.py."""
import pytest
import torch

from common import BACKENDS, C, FACTOR, IDS, K, SIZE, run, side_id, side_label
from udd_fast import ops
from udd_fast.decode import decode_plan

CASES = [(SIZE, 1), (SIZE, 10), (SIZE, 50), (64, 1), (64, 10), (128, 1), (128, 10), (224, 1)]  # (side, IPC)


def crop_resize_case(side, ipc, device):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(K * ipc, C, side, side, generator=g).to(device)
    src, boxes = decode_plan(K * ipc, side, FACTOR, device)
    return images, src, boxes


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("side,ipc", CASES, ids=[side_id(s, f"ipc{i}") for s, i in CASES])
@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_crop_resize(benchmark, backend, device, side, ipc, mode):
    images, src, boxes = crop_resize_case(side, ipc, device)
    benchmark.group = f"crop_resize{side_label(side)} IPC{ipc} {K * ipc}->{K * ipc * FACTOR ** 2} {mode}"
    if mode == "fwd":
        fn = lambda: ops.crop_resize(images, src, boxes, (side, side))  # noqa: E731
    else:
        leaf = images.clone().requires_grad_(True)
        grad = torch.randn(src.shape[0], C, side, side, device=device)

        def fn():
            leaf.grad = None
            ops.crop_resize(leaf, src, boxes, (side, side)).backward(grad)
    run(benchmark, backend, device, fn, rounds=10 if ipc * side * side >= 50 * SIZE * SIZE else 20)
