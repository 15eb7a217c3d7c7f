"""What the launchers in kernels/ share."""
import torch
import triton.language as tl


def acc_types(dtype):
    """(torch dtype, Triton dtype) a kernel accumulates in: float64 for float64 data, else float32."""
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)
