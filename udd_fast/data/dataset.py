"""What every reader returns: a dataset's facts (DatasetInfo) and its uint8 arrays (ArrayDataset), and
the one error a data problem raises (DataError)."""
from dataclasses import dataclass

import numpy as np


class DataError(RuntimeError):
    """A user-facing data problem; the message names the file(s) and what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # canonical built-in name, or 'npz:<abs path>' / 'folder:<abs path>'
    channels: int
    size: int  # images are square: H == W == size
    num_classes: int
    mean: tuple  # per channel, on the [0, 1] scale
    std: tuple
    class_names: tuple
    size_base: int


@dataclass
class ArrayDataset:
    info: DatasetInfo
    train_images: np.ndarray  # uint8 [N, C, H, W], C-contiguous
    train_labels: np.ndarray  # int64 [N]
    test_images: np.ndarray  # uint8 [M, C, H, W]
    test_labels: np.ndarray  # int64 [M]
