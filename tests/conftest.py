import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("UDD_FAST_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def real_data_dir(tmp_path_factory) -> Path:
    """A data dir holding the real MNIST, FashionMNIST (linked from shared/data) and CIFAR-10
    (written once into <repo>/.data by shared/data/make_cifar10.py)."""
    shared = shared_data_dir()
    cache = REPO / ".data"
    if not (cache / "cifar-10-batches-py" / "test_batch").exists():
        subprocess.run([sys.executable, str(shared / "make_cifar10.py"), str(cache)], check=True)
    root = tmp_path_factory.mktemp("realdata")
    for name in ("MNIST", "FashionMNIST"):
        (root / name).symlink_to(shared / name)
    (root / "cifar-10-batches-py").symlink_to(cache / "cifar-10-batches-py")
    return root


@pytest.fixture(scope="session")
def mnist_data(real_data_dir):
    from udd_fast.data import RealData, load_dataset

    return RealData(load_dataset("mnist", real_data_dir, download=False), "cpu")


# --- udd_fast.ops backends (tests/test_ops_*.py, tests/test_backends.py) -------------------------
import torch  # noqa: E402

if not torch.cuda.is_available():
    # No GPU: the Triton kernels run on CPU tensors in Triton's interpreter. Set before anything
    # imports triton (its jit decorator reads it); an explicit TRITON_INTERPRET is kept.
    os.environ.setdefault("TRITON_INTERPRET", "1")

OPS_BACKENDS = ("torch", "cpp", "triton", "cuda")


def ops_device(backend: str) -> torch.device:
    """Where a backend's tests run: the GPU when there is one, except for the CPU-only C++ backend."""
    return torch.device("cuda" if torch.cuda.is_available() and backend != "cpp" else "cpu")


@pytest.fixture(params=OPS_BACKENDS)
def ops_backend(request):
    """Each udd_fast.ops backend in turn (skipped, with the reason, when not live here)."""
    from udd_fast import ops

    live, why = ops.available_backends(reasons=True)[request.param]
    if not live:
        pytest.skip(f"backend {request.param!r} is not live here: {why}")
    with ops.use_backend(request.param):
        yield request.param


def pytest_terminal_summary(terminalreporter):
    """Say which udd_fast.ops backends the op tests could run, and why the others could not."""
    if "udd_fast.ops" not in sys.modules:
        return
    ops = sys.modules["udd_fast.ops"]
    terminalreporter.section("udd_fast.ops backends")
    for name, (live, why) in ops.available_backends(reasons=True).items():
        terminalreporter.write_line(f"{name:7s} {'live' if live else 'missing'}: {why}")
