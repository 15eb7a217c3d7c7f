"""How precisely the loop computes (--precision), as contexts the run enters: nothing is set for the
rest of the process."""
import contextlib

import torch


@contextlib.contextmanager
def precision_scope(precision: str):
    """fp32: no TF32; tf32 and bf16: TF32 allowed for CUDA matmuls and convolutions (PyTorch's default
    for convolutions). The previous settings come back on exit, so an evaluation or a later run is not
    affected. No effect on the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def autocast(device: torch.device, precision: str):
    """The context of the network passes: bf16 autocast with --precision bf16 (its weight cache off, so
    a CUDA graph may capture it), else nothing. Images, losses, gradient distances and optimizer state
    stay in the run's dtype."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
