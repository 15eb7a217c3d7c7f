"""SVHN: MATLAB files (label 10 means digit 0)."""
from pathlib import Path

import numpy as np

from .dataset import ArrayDataset, DataError
from .registry import DATASETS, DIGITS, REPLACE_HINT, SVHN_FILES
from .validate import as_int_labels, builtin_dataset, check_builtin_split, get_key


def _read_svhn_mat(path: Path):
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises several types on corrupt files
        raise DataError(f"{path}: cannot read MATLAB file ({type(exc).__name__}: {exc}); "
                        f"{REPLACE_HINT}") from exc
    x = np.asarray(get_key(mat, "X", path))
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: expected 'X' as uint8 (32, 32, 3, N), found {x.dtype} {x.shape}")
    images = x.transpose(3, 2, 0, 1)  # (H, W, C, N) -> (N, C, H, W)
    y = as_int_labels(get_key(mat, "y", path), str(path))
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DataError(f"{path}: SVHN labels 'y' must be in 1..10 (10 means digit 0), "
                        f"found range [{y.min()}, {y.max()}]")
    return images, np.where(y == 10, 0, y)


def load_svhn(root: Path) -> ArrayDataset:
    folder = root / DATASETS["svhn"]["folder"]
    splits = {}
    for split, fname in SVHN_FILES.items():
        images, labels = _read_svhn_mat(folder / fname)
        check_builtin_split("svhn", split, images, labels, str(folder / fname))
        splits[split] = (images, labels)
    return builtin_dataset("svhn", DIGITS, splits["train"], splits["test"])
