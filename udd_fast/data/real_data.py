"""The training and test split on a torch device, indexed by class for sampling."""
import numpy as np
import torch

from .dataset import ArrayDataset, DataError


def _class_index_table(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """[K, max_count] table: row c = indices of class c in dataset order, padded with -1."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
    order = np.argsort(labels, kind="stable")  # stable keeps dataset order within a class
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(labels)) - starts[labels[order]]
    table = np.full((num_classes, int(counts.max(initial=0))), -1, dtype=np.int64)
    table[labels[order], rank] = order
    return table, counts


def _to_device(arr: np.ndarray, device) -> torch.Tensor:
    # copy read-only / non-contiguous arrays so torch.from_numpy is safe
    if not (arr.flags.writeable and arr.flags.c_contiguous):
        arr = np.ascontiguousarray(arr).copy()
    return torch.from_numpy(arr).to(device)


class RealData:
    """The training/test split on a torch device, indexed by class for sampling."""

    def __init__(self, ds: ArrayDataset, device):
        self.info = ds.info
        self.device = torch.device(device)
        self.images = _to_device(ds.train_images, self.device)
        self.labels = _to_device(ds.train_labels.astype(np.int64, copy=False), self.device)
        self.test_images = _to_device(ds.test_images, self.device)
        self.test_labels = _to_device(ds.test_labels.astype(np.int64, copy=False), self.device)
        table, counts = _class_index_table(ds.train_labels, ds.info.num_classes)
        self.class_indices = _to_device(table, self.device)
        self.class_counts = _to_device(counts, self.device)
        shape = (1, ds.info.channels, 1, 1)
        self.mean = torch.tensor(ds.info.mean, dtype=torch.float32, device=self.device).view(shape)
        self.std = torch.tensor(ds.info.std, dtype=torch.float32, device=self.device).view(shape)
        self.host_counts = counts.tolist()  # host copy: sampling and first_of_class never read the device

    def to_float(self, idx: torch.Tensor) -> torch.Tensor:
        """images[idx] as float32 in [0, 1]."""
        return self.images[idx].to(torch.float32).div_(255.0)

    def first_of_class(self, c: int, n: int) -> torch.Tensor:
        """The first n training images of class c (dataset order), float32 in [0, 1]."""
        if not 0 <= c < self.info.num_classes:
            raise DataError(f"{self.info.name}: class {c} out of range [0, {self.info.num_classes})")
        if n > self.host_counts[c]:
            raise DataError(f"{self.info.name}: class {c} has {self.host_counts[c]} training images, "
                            f"{n} requested")
        return self.to_float(self.class_indices[c, :n])
