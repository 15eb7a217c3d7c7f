"""region_mask, forward only: the jitter policy's copies of images with Gaussian noise inside one
candidate window each (the windows and noise are regions.py's), normalized.

Kernels: kernels/region_mask.py (Triton), csrc/region_mask_cpu.cpp, csrc/region_mask_cuda.cu.
"""
import torch

from .backend import _load, _needs_grad, resolve


def region_mask_ref(x: torch.Tensor, masks: torch.Tensor, noise: torch.Tensor, mean, std) -> torch.Tensor:
    """Jittered copies for the jitter policy: x [N,C,H,W] in [0,1], masks [W,H,W] bool, noise
    [N,W,D,C,H,W] (already scaled by sigma) -> normalize(clamp(x + noise inside the window, 0, 1))
    as [N, W, D, C, H, W]."""
    m = masks.view(1, masks.shape[0], 1, 1, *masks.shape[1:]).to(x.dtype)
    jit = (x.unsqueeze(1).unsqueeze(1) + noise * m).clamp(0.0, 1.0)
    return (jit - mean.view(1, 1, 1, -1, 1, 1)) / std.view(1, 1, 1, -1, 1, 1)


def region_mask(x, masks, noise, mean, std):
    """normalize(clamp(x + noise inside each window, 0, 1)) for every window and draw:
    x [N,C,H,W], masks [W,H,W] bool, noise [N,W,D,C,H,W] (already scaled) -> [N,W,D,C,H,W].
    See region_mask_ref. Forward only (the references run when a gradient is needed)."""
    name = resolve(x)
    n, c, h, w = x.shape
    if name == "torch" or noise.numel() == 0 or _needs_grad(x, noise):
        return region_mask_ref(x, masks, noise, mean, std)
    nw, d = noise.shape[1], noise.shape[2]
    if noise.shape != (n, nw, d, c, h, w) or masks.shape != (nw, h, w):
        raise AssertionError(f"noise {tuple(noise.shape)} / masks {tuple(masks.shape)} do not match x {tuple(x.shape)}")
    dev, dt = x.device, x.dtype
    # mean/std: C values or one (broadcast), as the reference's view(1, 1, 1, -1, 1, 1) allows
    mean = torch.broadcast_to(torch.as_tensor(mean, device=dev, dtype=dt).reshape(-1), (c,)).contiguous()
    std = torch.broadcast_to(torch.as_tensor(std, device=dev, dtype=dt).reshape(-1), (c,)).contiguous()
    m = masks.to(dev, torch.uint8).contiguous()
    with torch.no_grad():
        z = noise.detach().to(dt).contiguous()
        return _load(name).region_mask_forward(x.detach().contiguous(), m, z, mean, std)
