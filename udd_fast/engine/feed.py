"""Training images in host memory (--real-on-device off) for the loop: every inner iteration's reads are
planned on the host from the same keyed draws the device makes (the matcher's class batches, the network
update's batches: their numbers are counted on the host already), gathered and copied to the device one
inner iteration ahead (data/staged.py), and served from there while the iteration runs. The first inner
iteration of an outer one is staged at its start (its network, and with --early its batch numbers, are
made at the boundary).
"""
import contextlib

import torch

from ..data.staged import StagedImages

PAD = torch.zeros(1, dtype=torch.int64)  # padded network batches read image 0 (masked out)


class Feed:
    """The staged reads of an Engine's inner iterations; `with feed.iteration(outer, inner):` around each."""

    def __init__(self, engine):
        self.engine = engine
        cfg, data = engine.cfg, engine.data
        self.batches = engine.net_update.batches.to("cpu")
        b = cfg.match.batch_real
        capacity = engine.K * b + engine.n_ahead * self.batches.most(cfg.net.n_data) * b + 1
        self.staging = StagedImages(data.images, engine.device, capacity)
        self.ready = None  # the (outer, inner, net_batch) whose reads were prefetched
        engine.log(f"training images in host memory: each inner iteration's (at most {capacity}) staged one ahead, "
                   f"{self.staging.nbytes() / 2 ** 20:.0f} MiB on the {engine.device.type}")

    def reads(self, outer: int, inner: int) -> torch.Tensor:
        """The dataset indices inner iteration (outer, inner) reads, with repeats, given where the network
        update stands on the host (for the next inner iteration: once this one is launched)."""
        e = self.engine
        parts = [e.matcher.real_indices(outer, inner, host=True).flatten(), PAD]
        if e.n_ahead == 1:
            numbers = self.batches.run_until(e.net_update.net_batch, e.cfg.net.n_data)[0]
        elif outer == e.group.start:  # the group's networks train in its first outer iteration only
            numbers = e.trajectories.batch_numbers(inner)
        else:
            numbers = []
        return torch.cat(parts + [self.batches.indices(n) for n in sorted(numbers)])  # an epoch's permutation once

    def _key(self, outer, inner):
        return outer, inner, self.engine.net_update.net_batch

    @contextlib.contextmanager
    def iteration(self, outer: int, inner: int):
        """Inner iteration (outer, inner) reads its staged images; the next one's are prefetched after it
        is launched (on CUDA the host gathers them while the device runs it)."""
        if self.ready != self._key(outer, inner):
            self.staging.prefetch(self.reads(outer, inner))
        trajectories = self.engine.trajectories
        if trajectories is not None and trajectories.stream is not None:  # its reads of the last set first
            torch.cuda.current_stream().wait_stream(trajectories.stream)
        self.staging.activate()
        self.ready = None
        with self.engine.data.staged(self.staging):
            yield
        if inner + 1 < self.engine.cfg.match.inner_loop:
            self.staging.prefetch(self.reads(outer, inner + 1))
            self.ready = self._key(outer, inner + 1)
