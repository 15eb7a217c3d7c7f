"""MNIST and FashionMNIST: idx files, plain or gzipped."""
import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from .dataset import ArrayDataset, DataError
from .registry import DATASETS, IDX_STEMS, REPLACE_HINT, idx_path
from .validate import builtin_dataset, check_builtin_split

_IDX_IMAGES_MAGIC = 2051  # 0x0803: uint8, 3 dims
_IDX_LABELS_MAGIC = 2049  # 0x0801: uint8, 1 dim


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip file ({exc}); {REPLACE_HINT}") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc}); {REPLACE_HINT}") from exc


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an idx file (big-endian header: magic, then one uint32 per dimension)."""
    raw = _read_bytes(path)
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        raise DataError(f"{path}: not an idx file of the expected kind (magic number {found}, "
                        f"expected {magic}); {REPLACE_HINT}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims)  # Python integers: a crafted header cannot wrap around
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes, but its header (dims {dims}) needs {expected}; "
                        f"{REPLACE_HINT}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def load_idx(key: str, root: Path) -> ArrayDataset:
    raw_dir = root / DATASETS[key]["folder"]
    splits = {}
    for split, (img_stem, lab_stem) in IDX_STEMS.items():
        img_path, lab_path = idx_path(raw_dir, img_stem), idx_path(raw_dir, lab_stem)
        images = _read_idx(img_path, _IDX_IMAGES_MAGIC)[:, None]  # (N, 28, 28) -> (N, 1, 28, 28)
        labels = _read_idx(lab_path, _IDX_LABELS_MAGIC).astype(np.int64)
        check_builtin_split(key, split, images, labels, f"{img_path} + {lab_path}")
        splits[split] = (images, labels)
    return builtin_dataset(key, DATASETS[key]["class_names"], splits["train"], splits["test"])
