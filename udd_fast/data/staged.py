"""Training images that stay in host memory (memory-mapped from the image cache) while the loop runs on a
device: the images one inner iteration reads are gathered on the host into a pinned buffer, copied to the
device on their own stream while the iteration before runs, and read there through a table from dataset
index to staged row, so that the inner iteration itself reads nothing from the host and can be captured.

Three buffers of `capacity` images each: `pinned` (host; page-locked on CUDA), `landing` (device, written
by the copy stream) and `images` (device, what the iteration reads; fixed, so a captured graph reads it).
`prefetch(idx)` fills pinned and starts its copy into landing; `activate()` moves landing into images
(a device-to-device copy, after the copy stream's) and points the table at it. The same code runs on the
CPU, without pinning or streams, where the tests check it against images copied whole.
"""
import torch


class StagedImages:
    """`capacity` rows of `host` (a CPU tensor, [N, ...] uint8) staged for reading on `device`;
    `read(idx)` = host[idx] for every index of the active set, and fails (on the device, asynchronously
    on CUDA) for any other."""

    def __init__(self, host: torch.Tensor, device, capacity: int):
        self.host, self.device, self.capacity = host, torch.device(device), int(capacity)
        cuda = self.device.type == "cuda"
        shape, dt = (self.capacity, *host.shape[1:]), host.dtype
        self.pinned = torch.empty(shape, dtype=dt, pin_memory=cuda)
        self.pinned_idx = torch.empty(self.capacity, dtype=torch.int64, pin_memory=cuda)
        self.landing = torch.empty(shape, dtype=dt, device=self.device)
        self.landing_idx = torch.empty(self.capacity, dtype=torch.int64, device=self.device)
        self.images = torch.empty(shape, dtype=dt, device=self.device)
        self.index = torch.empty(self.capacity, dtype=torch.int64, device=self.device)
        self.slot = torch.full((host.shape[0],), -1, dtype=torch.int64, device=self.device)  # index -> row, or -1
        self.rows = torch.arange(self.capacity, device=self.device)
        self.stream = torch.cuda.Stream(self.device) if cuda else None
        self.copied = torch.cuda.Event() if cuda else None  # landing holds the prefetched set
        self.taken = torch.cuda.Event() if cuda else None  # ... and has been moved into images
        self.active, self.landed = 0, None  # rows of the active set; rows landed (None: nothing prefetched)

    def nbytes(self) -> int:
        """Device bytes of the staging (landing and images)."""
        return 2 * self.images.numel() * self.images.element_size()

    def prefetch(self, idx: torch.Tensor):
        """Gather host[idx] (idx: a CPU int64 vector, repeats allowed) and start its copy to the device.
        The host waits only for the previous copy out of the pinned buffer (started an iteration ago)."""
        n = idx.numel()
        if n > self.capacity:
            raise ValueError(f"{n} images to stage, room for {self.capacity}")
        if self.copied is not None:
            self.copied.synchronize()
        torch.index_select(self.host, 0, idx, out=self.pinned[:n])
        self.pinned_idx[:n].copy_(idx)
        if self.stream is None:
            self.landing[:n].copy_(self.pinned[:n])
            self.landing_idx[:n].copy_(self.pinned_idx[:n])
        else:
            with torch.cuda.stream(self.stream):
                self.stream.wait_event(self.taken)  # the last set has left landing
                self.landing[:n].copy_(self.pinned[:n], non_blocking=True)
                self.landing_idx[:n].copy_(self.pinned_idx[:n], non_blocking=True)
                self.copied.record(self.stream)
        self.landed = n

    def activate(self):
        """Make the prefetched set the one `read` serves (device work, after the copy; the previous set's
        readers, on the current stream, come first)."""
        if self.landed is None:
            raise RuntimeError("no staged set to activate: prefetch first")
        n = self.landed
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_event(self.copied)
        with torch.no_grad():
            self.slot.index_fill_(0, self.index[:self.active], -1)  # the previous set is no longer readable
            self.images[:n].copy_(self.landing[:n])
            self.index[:n].copy_(self.landing_idx[:n])
            # a repeated index points at one of its copies, all the same image
            self.slot.index_put_((self.index[:n],), self.rows[:n])
        if self.taken is not None:
            self.taken.record()
        self.active, self.landed = n, None

    def read(self, idx: torch.Tensor) -> torch.Tensor:
        """host[idx] from the active set (idx on the device). An index outside it is a bug in the plan of
        what the iteration reads: a device-side assertion, never a wrong image."""
        rows = self.slot[idx]
        torch._assert_async((rows >= 0).all(), "a training image was read that was not staged for this iteration")
        return self.images[rows]
