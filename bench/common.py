"""What the per-op benchmarks share (bench/test_bench_<op>.py): the shapes of the distillation loop
(at 32 px, and at the sides of issue 23), the backends to time, and the timing itself.

Backends: torch (the references) and cpp on the CPU; torch, triton and cuda on the GPU when there
is one (Triton's CPU interpreter is not timed: its speed means nothing). GPU timings synchronize
inside the timed function. Rounds are few so that a run stays short on 2 cores."""
import torch

from udd_fast import ops

# CIFAR-10: K classes of C x SIZE x SIZE images, factor 2; the UDD ops also at CIFAR-100 (K = 100).
K, C, SIZE, FACTOR = 10, 3, 32, 2
TILE = SIZE // FACTOR  # a formation's tile, 16 stored pixels
SETS = [(10, 1), (10, 10), (10, 50), (100, 1), (100, 10)]  # (K, IPC)
SET_IDS = [f"K{k}-ipc{i}" for k, i in SETS]
# Image sides beyond CIFAR's (issue 23), selected by `-k "64 or 128 or 224"`: K classes of C x side x
# side images, factor 2 (tiles side/2), and the networks' features there (convnet_map; ResNetAP-10,
# IDC's ImageNet network, 512 wide). Fewer sets than at 32 px: the CPU's memory and time.
SIDES = (64, 128, 224)
RESNET_AP10_WIDTH = 512


def convnet_map(side, depth=None):
    """(channels, h, w) of ConvNet's feature map at an image side: at its depth by resolution (the
    proxy's and the matching ConvNet's: 4x4 at 64 and 128 px, 3x3 at 224) or a given depth (3:
    ConvNet-3's side/8 map)."""
    from udd_fast.models import ConvNet, convnet_depth

    return ConvNet(1, C, side, depth=depth or convnet_depth(side)).feature_shape


def side_id(side, rest):
    """A case's id: `rest` alone at 32 px (the ids of the CIFAR-10 tables), else '<side>px-<rest>'."""
    return rest if side == SIZE else f"{side}px-{rest}"


def side_label(side):
    """What a benchmark group says of the side: nothing at 32 px (as the CIFAR-10 tables), else ' <side>px'."""
    return "" if side == SIZE else f" {side}px"
GPU = torch.cuda.is_available()


def _backends():
    live = ops.available_backends()
    out = [("torch", "cuda" if GPU else "cpu")]
    if live["cpp"]:
        out.append(("cpp", "cpu"))
    if GPU:
        out += [(b, "cuda") for b in ("triton", "cuda") if live[b]]
    return out


BACKENDS = _backends()  # (backend, device) pairs
IDS = [f"{b}-{d}" for b, d in BACKENDS]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def run(benchmark, backend, device, fn, rounds):
    """Time fn() on `backend`, synchronized, a few rounds after one warm-up round."""
    def timed():
        out = fn()
        sync(device)
        return out

    with ops.use_backend(backend):
        assert ops.resolve(torch.zeros(1, device=device)) == backend
        benchmark.extra_info.update(backend=backend, device=device)
        benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)
