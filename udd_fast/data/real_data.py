"""The training and test split on a torch device, indexed by class for sampling."""
import contextlib
import os
import warnings

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


PLACEMENTS = ("auto", "on", "off")
# auto keeps the training images on the device up to this share of its memory (the CPU: physical memory)
AUTO_SHARE = 0.25


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _device_memory(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else _host_memory()


def placement(arr: np.ndarray, device: torch.device, choice: str) -> str:
    """Where the training images live (--real-on-device): 'on' (copied onto the device, as every set under
    32 px) or 'off' (left in host memory, memory-mapped from the image cache: the loop stages each inner
    iteration's images one ahead, data/staged.py). auto: on where they fit AUTO_SHARE of the device's
    memory; on the CPU, images already in memory stay there (off only saves a copy of a memory map)."""
    if choice not in PLACEMENTS:
        raise DataError(f"--real-on-device must be one of {', '.join(PLACEMENTS)}, not {choice!r}")
    if choice != "auto":
        return choice
    if device.type == "cpu" and not isinstance(arr, np.memmap):
        return "on"
    return "off" if arr.nbytes > AUTO_SHARE * _device_memory(device) else "on"


def _mapped(arr: np.ndarray) -> torch.Tensor:
    """A CPU tensor over a read-only memory map, without a copy (nothing writes the training images)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


def _to_device(arr: np.ndarray, device) -> torch.Tensor:
    # copy read-only / non-contiguous arrays so torch.from_numpy is safe
    if not (arr.flags.writeable and arr.flags.c_contiguous):
        arr = np.ascontiguousarray(arr).copy()
    return torch.from_numpy(arr).to(device)


class RealData:
    """The training/test split on a torch device, indexed by class for sampling. The training images may
    instead stay in host memory (`placement` 'off'): then the loop stages what each inner iteration reads
    (`staged`), and reads outside it go to host memory directly. The test images are copied."""

    def __init__(self, ds: ArrayDataset, device, on_device: str = "auto"):
        self.info = ds.info
        self.device = torch.device(device)
        self.placement = placement(ds.train_images, self.device, on_device)
        self.images = _mapped(ds.train_images) if self.placement == "off" else _to_device(ds.train_images, self.device)
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
        self.host_index = torch.from_numpy(table), torch.from_numpy(counts)  # ... and plans of staged reads
        self._staged = None

    @contextlib.contextmanager
    def staged(self, staging):
        """Reads of training images inside the block come from `staging` (a StagedImages holding them)."""
        self._staged = staging
        try:
            yield
        finally:
            self._staged = None

    def to_float(self, idx: torch.Tensor) -> torch.Tensor:
        """images[idx] as float32 in [0, 1], on the device: from the staged set inside `staged`; images
        in host memory outside it are gathered there (idx read back) and copied over."""
        if self._staged is not None:
            x = self._staged.read(idx)
        elif self.images.device != self.device:
            x = self.images[idx.cpu()].to(self.device)
        else:
            x = self.images[idx]
        return x.to(torch.float32).div_(255.0)

    def first_of_class(self, c: int, n: int) -> torch.Tensor:
        """The first n training images of class c (dataset order), float32 in [0, 1]."""
        if not 0 <= c < self.info.num_classes:
            raise DataError(f"{self.info.name}: class {c} out of range [0, {self.info.num_classes})")
        if n > self.host_counts[c]:
            raise DataError(f"{self.info.name}: class {c} has {self.host_counts[c]} training images, "
                            f"{n} requested")
        return self.to_float(self.class_indices[c, :n])
