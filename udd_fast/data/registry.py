"""The built-in datasets: their names, facts and files (torchvision's layout), and the data directory.

    <data_dir>/MNIST/raw/{train-images-idx3-ubyte, train-labels-idx1-ubyte,
                          t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte}[.gz]
    <data_dir>/FashionMNIST/raw/...            (same names)
    <data_dir>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <data_dir>/cifar-100-python/{train, test, meta}
    <data_dir>/svhn/{train_32x32.mat, test_32x32.mat}
"""
import os
from pathlib import Path

from .dataset import DataError

ENV_DATA_DIR = "UDD_FAST_DATA"
# what a message about a damaged built-in file tells the user to do
REPLACE_HINT = "delete it and re-download it (load_dataset(..., download=True)) or place an intact copy there"

DIGITS = tuple(str(i) for i in range(10))
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# canonical name -> facts. 'class_names' is None where the names come from the files.
DATASETS = {
    "mnist": dict(title="MNIST", folder="MNIST/raw", channels=1, size=28, num_classes=10,
                  mean=(0.1307,), std=(0.3081,), size_base=28,
                  train_count=60000, test_count=10000, class_names=DIGITS),
    "fashionmnist": dict(title="FashionMNIST", folder="FashionMNIST/raw", channels=1, size=28,
                         num_classes=10, mean=(0.2861,), std=(0.3530,), size_base=32,
                         train_count=60000, test_count=10000, class_names=FASHION_NAMES),
    "svhn": dict(title="SVHN", folder="svhn", channels=3, size=32, num_classes=10,
                 mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970), size_base=32,
                 train_count=73257, test_count=26032, class_names=DIGITS),
    "cifar10": dict(title="CIFAR-10", folder="cifar-10-batches-py", channels=3, size=32,
                    num_classes=10, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
                    size_base=32, train_count=50000, test_count=10000, class_names=None),
    "cifar100": dict(title="CIFAR-100", folder="cifar-100-python", channels=3, size=32,
                     num_classes=100, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
                     size_base=32, train_count=50000, test_count=10000, class_names=None),
}

_ALIASES = {"fashion": "fashionmnist"}

# idx file stems for MNIST-like datasets, per split: (images, labels)
IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

CIFAR_LAYOUT = {
    "cifar10": dict(train=tuple(f"data_batch_{k}" for k in range(1, 6)), test=("test_batch",),
                    meta="batches.meta", labels_key="labels", names_key="label_names"),
    "cifar100": dict(train=("train",), test=("test",), meta="meta",
                     labels_key="fine_labels", names_key="fine_label_names"),
}

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def canonical_name(name: str) -> str:
    """Map a built-in dataset name or alias to its canonical form (case-insensitive)."""
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        valid = ", ".join(sorted(DATASETS))
        raise DataError(f"unknown dataset {name!r}; valid names: {valid} "
                        "(or a path to an existing .npz file or image-folder directory)")
    return key


def resolve_data_dir(data_dir=None) -> Path:
    """The data directory: the argument, else $UDD_FAST_DATA, else ~/.cache/udd_fast/data."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(ENV_DATA_DIR) or Path.home() / ".cache" / "udd_fast" / "data"
    return Path(data_dir).expanduser().absolute()


def idx_path(raw_dir: Path, stem: str) -> Path:
    """Prefer the plain idx file if present, else the .gz (also the name reported when missing)."""
    plain = raw_dir / stem
    return plain if plain.exists() else raw_dir / (stem + ".gz")


def required_files(key: str, root: Path) -> list[Path]:
    """The files a built-in is read from, under the data directory `root`."""
    folder = root / DATASETS[key]["folder"]
    if key in ("mnist", "fashionmnist"):
        return [idx_path(folder, stem) for pair in IDX_STEMS.values() for stem in pair]
    if key in CIFAR_LAYOUT:
        lay = CIFAR_LAYOUT[key]
        return [folder / f for f in (*lay["train"], *lay["test"], lay["meta"])]
    return [folder / f for f in SVHN_FILES.values()]
