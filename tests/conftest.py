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
