"""The built-in datasets: their names, facts and files (torchvision's layout), and the data directory.

    <data_dir>/MNIST/raw/{train-images-idx3-ubyte, train-labels-idx1-ubyte,
                          t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte}[.gz]
    <data_dir>/FashionMNIST/raw/...            (same names)
    <data_dir>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <data_dir>/cifar-100-python/{train, test, meta}
    <data_dir>/svhn/{train_32x32.mat, test_32x32.mat}
    <data_dir>/tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/images/*.JPEG,
                                  val/images/*.JPEG, val/val_annotations.txt}
    <data_dir>/imagenet/{train, val}/<wnid>/*.JPEG   (ImageNet's own layout; a link to it will do)

The JPEG sets (Tiny-ImageNet, the ImageNet subsets) are not downloaded (a login is needed): they are
read where the layout above has them, decoded once at a chosen size into a cache (imagenet.py).
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

# ImageNet's statistics: IDC's (data.py MEANS/STDS['imagenet']), also DC/DM/MTT's for Tiny-ImageNet
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The JPEG sets: read at any --size (`size` is the default; `size_base` is IDC's base of its lr_img rule),
# with the sample counts of their files (no fixed count).
DATASETS.update({
    "tinyimagenet": dict(title="Tiny-ImageNet", folder="tiny-imagenet-200", channels=3, size=64, num_classes=200,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD, size_base=64, train_count=100000, test_count=10000,
                         class_names=None, decoded=True),
    "imagenet10": dict(title="ImageNet-10", folder="imagenet", channels=3, size=224, num_classes=10,
                       mean=IMAGENET_MEAN, std=IMAGENET_STD, size_base=224, train_count=None, test_count=None,
                       class_names=None, decoded=True),
    "imagenet100": dict(title="ImageNet-100", folder="imagenet", channels=3, size=224, num_classes=100,
                        mean=IMAGENET_MEAN, std=IMAGENET_STD, size_base=224, train_count=None, test_count=None,
                        class_names=None, decoded=True),
})
# any list of ImageNet classes (--dataset imagenet --classes FILE): the facts of the subsets but the count
IMAGENET_ANY = dict(DATASETS["imagenet10"], title="ImageNet", num_classes=None)

_ALIASES = {"fashion": "fashionmnist", "tiny": "tinyimagenet", "tinyimagenet200": "tinyimagenet"}

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
