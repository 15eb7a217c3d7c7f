"""Keyed sampling of real batches, as pure functions of (seed, position), on the device.

Class batches: each class is an endless stream of keyed shuffled epochs (without replacement
inside an epoch); batch `step` of class c is elements [step*B, (step+1)*B) of that stream. All
classes are drawn together, with no per-sample Python.

All-data batches (network updates, evaluation): epoch e is a keyed permutation of the whole set,
cut into batches of B, the last one smaller; batch number b counts across epochs.
"""
import copy
import math

import torch

from . import rng


def class_batch_indices(class_indices: torch.Tensor, class_counts: torch.Tensor, seed: int, step, batch: int,
                        host_counts=None) -> torch.Tensor:
    """[K, batch] dataset indices: batch `step` of every class's keyed epoch stream. `step` is an int or
    an int64 device scalar (the loop's counter); `host_counts`, a host copy of class_counts (the loop
    passes RealData's), sizes the draw without reading the device. Each class permutes the epochs its
    batch touches, counted from its own first one: at most `span` of them, a host-known number."""
    k, max_count = class_indices.shape
    dev = class_indices.device
    counts = class_counts.to(dev).view(k, 1)
    if host_counts is None:
        host_counts = class_counts.tolist()
    span = (batch - 1) // max(1, min(int(c) for c in host_counts)) + 2
    pos = step * batch + torch.arange(batch, device=dev).view(1, batch)  # [1, B]
    first = (step * batch) // counts  # [K, 1]: each class's first epoch in this batch
    epochs = first + torch.arange(span, device=dev).view(1, span)  # [K, span]
    base = rng.subkeys(rng.key(seed, "class_epoch"), torch.arange(k, device=dev))  # [K]
    perms = rng.permutation(rng.fold(base.view(k, 1), epochs), max_count, valid=counts)  # [K, span, max_count]
    slot = perms[torch.arange(k, device=dev).view(k, 1), pos // counts - first, pos % counts]  # [K, B]
    return torch.gather(class_indices, 1, slot)


class EpochBatches:
    """All-data batches of `batch` from keyed epoch permutations; batch numbers count across epochs.

    Stateless apart from a one-epoch cache: `indices(b)` depends only on (seed, purpose, n, batch, b).
    """

    def __init__(self, n: int, batch: int, seed: int, purpose: str, device):
        self.n, self.batch, self.device = n, batch, device
        self.per_epoch = math.ceil(n / batch)
        self.base = rng.key(seed, purpose)
        self._epoch, self._perm = None, None

    def to(self, device) -> "EpochBatches":
        """The same batches, drawn on another device (the staged reads' plan draws them on the host)."""
        twin = copy.copy(self)
        twin.device, twin._epoch, twin._perm = device, None, None
        return twin

    def indices(self, b: int) -> torch.Tensor:
        epoch, j = divmod(b, self.per_epoch)
        if epoch != self._epoch:
            keys = rng.key_tensor(rng.fold_int(self.base, epoch), self.device)
            self._perm, self._epoch = rng.permutation(keys, self.n)[0], epoch
        return self._perm[j * self.batch:(j + 1) * self.batch]

    def on_device(self, b0: torch.Tensor, count: int):
        """Batches b0 .. b0+count-1 drawn on the device from a device batch number b0: ([count, batch]
        indices, each padded with index 0 past its batch's size; [count] sizes). Bit for bit
        `indices(b)` and `size(b)`; the epochs they touch are permuted once per call."""
        span = (count - 1) // self.per_epoch + 2  # epochs that `count` consecutive batches can touch
        dev = b0.device
        e0 = b0 // self.per_epoch
        perms = rng.permutation(rng.fold(rng.key_tensor(self.base, dev), e0 + torch.arange(span, device=dev)),
                                self.n)  # [span, n]
        b = b0 + torch.arange(count, device=dev)
        start = (b % self.per_epoch) * self.batch  # [count]
        sizes = (self.n - start).clamp(max=self.batch)
        at = torch.arange(self.batch, device=dev)
        pos = (start.view(-1, 1) + at).clamp(max=self.n - 1)
        idx = perms[(b // self.per_epoch - e0).view(-1, 1), pos]
        return torch.where(at < sizes.view(-1, 1), idx, 0), sizes

    def fewest(self, n_images: int) -> int:
        """The fewest batches `run_until` takes for n_images, over every starting position in an epoch."""
        return min(self._counts(n_images))

    def most(self, n_images: int) -> int:
        """The most batches `run_until` takes for n_images, over every starting position in an epoch."""
        return max(self._counts(n_images))

    def _counts(self, n_images: int):
        return [len(self.run_until(j, n_images)[0]) for j in range(self.per_epoch)]

    def size(self, b: int) -> int:
        """How many images batch b holds (the last of an epoch is smaller), known on the host."""
        j = b % self.per_epoch
        return min(self.batch, self.n - j * self.batch)

    def run_until(self, b: int, n_images: int):
        """Batch numbers from b on until at least n_images were seen (IDC's n_data): (numbers, next b)."""
        out, seen = [], 0
        while seen < n_images:
            seen += self.size(b)
            out.append(b)
            b += 1
        return out, b
