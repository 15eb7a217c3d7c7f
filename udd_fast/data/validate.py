"""The checks every reader applies to what it read: labels, shapes, ranges, classes, sample counts."""
import os
from pathlib import Path

import numpy as np

from .dataset import ArrayDataset, DataError, DatasetInfo
from .registry import DATASETS, REPLACE_HINT

ENV_ALLOW_PARTIAL = "UDD_FAST_ALLOW_PARTIAL"


def _allow_partial() -> bool:
    return os.environ.get(ENV_ALLOW_PARTIAL, "") == "1"


def as_int_labels(labels, where: str) -> np.ndarray:
    """Labels as int64 [N]; integral floats are accepted (MATLAB stores doubles)."""
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{where}: labels must be 1-D, found shape {arr.shape}")
    if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and arr.size == 0):
        raise DataError(f"{where}: labels must be integers, found dtype {arr.dtype}")
    return arr.astype(np.int64)


def validate_split(images: np.ndarray, labels: np.ndarray, *, where: str, channels: int,
                   size: int, num_classes: int, require_all_classes: bool = False,
                   expected_count: int | None = None) -> None:
    """Raise DataError (naming `where`) unless images/labels form a valid split."""
    if images.dtype != np.uint8:
        raise DataError(f"{where}: expected uint8 images, found {images.dtype}")
    if images.ndim != 4 or images.shape[1:] != (channels, size, size):
        raise DataError(f"{where}: expected images of shape (N, {channels}, {size}, {size}), "
                        f"found {images.shape}")
    if labels.shape != (len(images),):
        raise DataError(f"{where}: {len(images)} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where}: labels must be in [0, {num_classes}), found range "
                        f"[{labels.min()}, {labels.max()}]")
    if require_all_classes:
        absent = np.flatnonzero(np.bincount(labels, minlength=num_classes) == 0)
        if absent.size:
            raise DataError(f"{where}: every class must be present in the training split; "
                            f"classes {absent.tolist()[:20]} have no samples")
    if expected_count is not None and not _allow_partial() and len(images) != expected_count:
        raise DataError(f"{where}: expected {expected_count} samples, found {len(images)} "
                        f"(set {ENV_ALLOW_PARTIAL}=1 to accept partial files)")


def builtin_dataset(key, class_names, train, test) -> ArrayDataset:
    spec = DATASETS[key]
    info = DatasetInfo(name=key, channels=spec["channels"], size=spec["size"],
                       num_classes=spec["num_classes"], mean=tuple(spec["mean"]),
                       std=tuple(spec["std"]), class_names=tuple(class_names),
                       size_base=spec["size_base"])
    return ArrayDataset(info, *contiguous(*train), *contiguous(*test))


def contiguous(images, labels):
    return np.ascontiguousarray(images, dtype=np.uint8), np.ascontiguousarray(labels, dtype=np.int64)


def check_builtin_split(key, split, images, labels, where):
    spec = DATASETS[key]
    validate_split(images, labels, where=where, channels=spec["channels"], size=spec["size"],
                   num_classes=spec["num_classes"], require_all_classes=(split == "train"),
                   expected_count=spec[f"{split}_count"])


def get_key(d: dict, key: str, path: Path):
    """d[key] of a dict read from `path`; a missing key names the file."""
    if key not in d:
        raise DataError(f"{path}: missing key {key!r} (found {sorted(d)}); {REPLACE_HINT}")
    return d[key]
