"""crop_resize per backend at the CIFAR-10 loop's decode: all K*IPC stored images into K*IPC*4
formations (the loop decodes all, then subsamples), IPC 1/10/50, forward and forward+backward.

    pytest bench/test_bench_crop_resize.py --benchmark-only [--benchmark-json=bench.json]

Backends and timing: bench/common.py."""
import pytest
import torch

from common import BACKENDS, C, FACTOR, IDS, K, SIZE, run
from udd_fast import ops
from udd_fast.decode import decode_plan


def crop_resize_case(ipc, device):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(K * ipc, C, SIZE, SIZE, generator=g).to(device)
    src, boxes = decode_plan(K * ipc, SIZE, FACTOR, device)
    return images, src, boxes


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
    run(benchmark, backend, device, fn, rounds=10 if ipc == 50 else 20)
