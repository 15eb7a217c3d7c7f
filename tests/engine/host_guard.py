"""A guard that fails on any read of a tensor's value into Python, and on any tensor made from host
data (a copy from pageable host memory on a GPU), for tests of the distillation loop's inner iteration.

On the CPU it intercepts, at the Python level (a TorchFunctionMode): item, tolist, numpy, bool / int /
float / index of a tensor, nonzero, unique, masked_select, boolean-mask indexing, and torch.tensor /
as_tensor / from_numpy / new_tensor of non-tensor data. On CUDA it also sets
torch.cuda.set_sync_debug_mode("error"), which catches every synchronizing call, C++ ones included.
"""
import contextlib

import torch
from torch.overrides import TorchFunctionMode

T = torch.Tensor
READS = {T.item, T.tolist, T.numpy, T.__bool__, T.__int__, T.__float__, T.__index__, T.nonzero, torch.nonzero,
         T.unique, torch.unique, T.masked_select, torch.masked_select, torch.argwhere, T.argwhere}
MADE_FROM_HOST = {torch.tensor, torch.as_tensor, torch.from_numpy, T.new_tensor}


class HostReads(TorchFunctionMode):
    """Records (and, with `strict`, raises on) every host read inside the block."""

    def __init__(self, strict=True):
        super().__init__()
        self.strict, self.seen = strict, []

    def _hit(self, what):
        self.seen.append(what)
        if self.strict:
            raise AssertionError(f"host read inside the inner iteration: {what}")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in READS:
            self._hit(getattr(func, "__name__", str(func)))
        elif func in MADE_FROM_HOST:
            data = args[1] if func is T.new_tensor else (args[0] if args else kwargs.get("data"))
            if not isinstance(data, torch.Tensor):
                self._hit(f"{func.__name__} of host data {type(data).__name__}")
        elif func is T.__getitem__:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index):
                self._hit("indexing by a boolean mask")
        return func(*args, **kwargs)


@contextlib.contextmanager
def no_host_reads(device="cpu", strict=True):
    """The guard over a block; yields the HostReads mode (its `seen` lists what it caught)."""
    mode = HostReads(strict)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        with mode:
            yield mode
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
