"""Distributed distillation on torch.distributed (started by torchrun): classes are partitioned across
ranks, network updates are data-parallel (README, "Several GPUs and nodes").

`Comm` is the one place that talks to torch.distributed. With one process (no WORLD_SIZE, or 1) every
collective is a no-op, so the single-process run executes exactly the code it always did.

Two process groups: the default group carries the distillation loop's collectives with a short
timeout (`--dist-timeout`, 60 s), so a rank that dies or hangs stops the run within a minute; the
`setup` group has a long timeout for the waits in which one rank does long work the others need
(rank 0 training the UDD proxy, local rank 0 downloading data).

Every payload byte handed to a collective is counted by purpose (`bytes_by_purpose`); a ring
all-reduce moves about 2 (N-1)/N times its payload through each rank's link.
"""
import datetime
import os
from collections import Counter

import torch
import torch.distributed as dist

SETUP_TIMEOUT_S = 4 * 3600  # proxy training or a download on rank 0 may take this long


class RankFailure(RuntimeError):
    """A collective failed: another rank died, hung past the timeout, or disagrees with this one."""


def partition(n: int, rank: int, world: int) -> tuple:
    """[lo, hi) of rank's contiguous, balanced share of n items (sizes differ by at most one)."""
    return rank * n // world, (rank + 1) * n // world


def env_world() -> tuple:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


class Comm:
    """This process's place in the run and the collectives the run uses."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, setup_group=None, device="cpu"):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.setup_group = setup_group
        self.device = torch.device(device)  # where the loop's small collective tensors live (the GPU with NCCL)
        self.bytes_by_purpose = Counter()
        self.calls_by_purpose = Counter()

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def classes(self, num_classes: int) -> tuple:
        """[c0, c1): the classes whose synthetic images this rank owns and updates."""
        return partition(num_classes, self.rank, self.world)

    def shard(self, n: int) -> tuple:
        """[lo, hi): this rank's positions in a global batch of n."""
        return partition(n, self.rank, self.world)

    # -- collectives (no-ops with one process) ---------------------------------------------------
    def _count(self, purpose, t):
        self.bytes_by_purpose[purpose] += t.numel() * t.element_size()
        self.calls_by_purpose[purpose] += 1

    def _call(self, purpose, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except RuntimeError as e:  # gloo and NCCL report a dead peer or a timeout as RuntimeError
            raise RankFailure(f"rank {self.rank}/{self.world}: the collective for {purpose} failed; a rank died, "
                              f"hung or was stopped ({str(e).splitlines()[0][:300]})") from None

    def all_reduce(self, t: torch.Tensor, purpose: str, op: str = "sum") -> torch.Tensor:
        """In place over all ranks (sum or max); returns t."""
        if self.distributed:
            self._count(purpose, t)
            self._call(purpose, dist.all_reduce, t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t

    def merge_rows(self, t: torch.Tensor, lo: int, hi: int, purpose: str) -> torch.Tensor:
        """Every rank's rows [lo, hi) of t (disjoint across ranks) assembled into one full tensor on
        every rank. Exact: a sum in which each element has one non-zero term."""
        if not self.distributed:
            return t
        full = torch.zeros_like(t)
        full[lo:hi] = t[lo:hi]
        return self.all_reduce(full, purpose)

    def check_same(self, values: torch.Tensor, what: str):
        """Raise RankFailure unless `values` (float64, 1-D) is bitwise the same on every rank."""
        if not self.distributed:
            return
        both = torch.cat([values, -values]).to(torch.float64)
        self.all_reduce(both, f"check {what}", op="max")
        n = values.numel()
        if not torch.equal(both[:n], -both[n:]):
            raise RankFailure(f"the ranks' {what} differ (max {both[:n].tolist()} vs min {(-both[n:]).tolist()}): "
                              f"the ranks no longer compute the same run")

    def any(self, flag: bool, purpose: str) -> bool:
        """True on every rank when it is true on any rank."""
        if not self.distributed:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self.device)
        return bool(self.all_reduce(t, purpose, op="max").item())

    # -- setup (long timeout) ------------------------------------------------------------------
    def from_main(self, fn, errors=(Exception,)):
        """fn() on rank 0, its result (or one of `errors` it raised) delivered to every rank."""
        if not self.distributed:
            return fn()
        box = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except errors as e:
                box[0] = ("error", e)
        self._call("setup broadcast", dist.broadcast_object_list, box, src=0, group=self.setup_group)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def everywhere(self, fn, errors=(Exception,), local_first=False):
        """fn() on every rank (local rank 0 of each node first, when local_first: it may download what
        the others then read), then agree: if any rank raised one of `errors`, every rank raises the
        first such error, naming its rank."""
        if not self.distributed:
            return fn()
        result, err = None, None

        def attempt():
            nonlocal result, err
            try:
                result = fn()
            except errors as e:
                err = e

        if local_first and self.local_rank == 0:
            attempt()
        if local_first:
            self._call("setup barrier", dist.barrier, group=self.setup_group)
        if not (local_first and self.local_rank == 0):
            attempt()
        got = [None] * self.world
        msg = None if err is None else (type(err), str(err))
        self._call("setup gather", dist.all_gather_object, got, msg, group=self.setup_group)
        for r, m in enumerate(got):
            if m is not None:
                if r == self.rank:
                    raise err
                raise m[0](f"rank {r}: {m[1]}")
        return result

    def same_everywhere(self, obj, what: str, error=RuntimeError):
        """Raise `error` on every rank unless obj (picklable, comparable) is equal on all ranks."""
        if not self.distributed:
            return
        got = [None] * self.world
        self._call("setup gather", dist.all_gather_object, got, obj, group=self.setup_group)
        bad = [r for r in range(self.world) if got[r] != got[0]]
        if bad:
            raise error(f"the {what} differ between ranks: rank 0 has {got[0]!r}, rank {bad[0]} has {got[bad[0]]!r}")

    def close(self, barrier: bool = False):
        """Leave the process group. `barrier` (a run that ended well): first wait until every rank is done,
        so that none tears gloo down while a peer's last collective is still in flight (seen once as
        'terminate called without an active exception', a rank aborting at exit)."""
        if self.distributed and dist.is_initialized():
            if barrier:
                self._call("end of run", dist.barrier)
            dist.destroy_process_group()


def backend_name() -> str:
    return dist.get_backend() if dist.is_available() and dist.is_initialized() else "none"


def init(device_type: str = "cpu", timeout_s: float = 60.0) -> Comm:
    """The Comm of this process: joins torchrun's process group when WORLD_SIZE > 1 (NCCL for CUDA,
    gloo for the CPU), else a single-process Comm."""
    rank, world, local_rank = env_world()
    if world <= 1:
        return Comm()
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed")
    backend = "nccl" if device_type == "cuda" else "gloo"
    try:
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        # gloo for the setup group even on GPUs: it carries pickled objects, which NCCL would stage on the GPU
        setup = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=SETUP_TIMEOUT_S))
    except (RuntimeError, ValueError) as e:
        raise RankFailure(f"rank {rank}/{world}: could not join the process group ({backend}): "
                          f"{str(e).splitlines()[0][:300]}") from None
    return Comm(dist.get_rank(), dist.get_world_size(), local_rank, setup,
                f"cuda:{local_rank}" if device_type == "cuda" else "cpu")
