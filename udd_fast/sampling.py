"""Keyed sampling of real batches, as pure functions of (seed, position), on the device.

Class batches: each class is an endless stream of keyed shuffled epochs (without replacement
inside an epoch); batch `step` of class c is elements [step*B, (step+1)*B) of that stream. All
classes are drawn together, with no per-sample Python.

All-data batches (network updates, evaluation): epoch e is a keyed permutation of the whole set,
cut into batches of B, the last one smaller; batch number b counts across epochs.
"""
import math

import torch

from . import rng


def class_batch_indices(class_indices: torch.Tensor, class_counts: torch.Tensor, seed: int, step: int,
                        batch: int, host_counts=None) -> torch.Tensor:
    """[K, batch] dataset indices: batch `step` of every class's keyed epoch stream. `host_counts`, a
    host copy of class_counts (the loop passes RealData's), sizes the draw without reading the device."""
    k, max_count = class_indices.shape
    dev = class_indices.device
    counts = class_counts.to(dev).view(k, 1)
    pos = step * batch + torch.arange(batch, device=dev).view(1, batch)  # [1, B]
    epoch = pos // counts  # [K, B]
    if host_counts is None:
        host_counts = class_counts.tolist()
    first = min(step * batch // int(c) for c in host_counts)
    last = max((step * batch + batch - 1) // int(c) for c in host_counts)
    epochs = torch.arange(first, last + 1, device=dev)  # the epochs this batch touches
    base = rng.subkeys(rng.key(seed, "class_epoch"), torch.arange(k, device=dev))  # [K]
    keys = rng.fold(base.view(k, 1), epochs.view(1, -1))  # [K, E]
    perms = rng.permutation(keys, max_count, valid=counts)  # [K, E, max_count]
    offset = pos % counts
    slot = perms[torch.arange(k, device=dev).view(k, 1), epoch - first, offset]  # [K, B]
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

    def indices(self, b: int) -> torch.Tensor:
        epoch, j = divmod(b, self.per_epoch)
        if epoch != self._epoch:
            keys = rng.key_tensor(rng.fold_int(self.base, epoch), self.device)
            self._perm, self._epoch = rng.permutation(keys, self.n)[0], epoch
        return self._perm[j * self.batch:(j + 1) * self.batch]

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
