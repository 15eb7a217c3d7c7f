"""region_mask in Triton: one lane per output element (n, window, draw, c, i, j):
normalize(clamp(x + noise * mask, 0, 1)); x and the masks are read broadcast."""
import torch
import triton
import triton.language as tl

from .utils import acc_types

BLOCK = 1024


@triton.jit
def _region_mask_fwd(x_ptr, m_ptr, z_ptr, mean_ptr, std_ptr, out_ptr, total, NW, D, C, HW,
                     ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < total
    pix = offs % HW
    c = (offs // HW) % C
    win = (offs // (HW * C * D)) % NW
    n = offs // (HW * C * D * NW)
    x = tl.load(x_ptr + (n * C + c) * HW + pix, mask=live, other=0).to(ACC)
    inside = tl.load(m_ptr + win * HW + pix, mask=live, other=0) != 0
    z = tl.load(z_ptr + offs, mask=live, other=0).to(ACC)
    v = tl.where(inside, x + z, x)  # outside the window noise * 0 adds nothing
    v = tl.minimum(tl.maximum(v, 0.0), 1.0)
    mu = tl.load(mean_ptr + c, mask=live, other=0).to(ACC)
    sd = tl.load(std_ptr + c, mask=live, other=1).to(ACC)
    tl.store(out_ptr + offs, ((v - mu) / sd).to(out_ptr.dtype.element_ty), mask=live)


def region_mask_forward(x, masks, noise, mean, std):
    """x [N,C,H,W]; masks [NW,H,W] uint8; noise [N,NW,D,C,H,W] (x's dtype); mean, std [C]."""
    n, c, h, w = x.shape
    nw, d = noise.shape[1], noise.shape[2]
    out = torch.empty_like(noise)
    total = out.numel()
    acc_tl = acc_types(x.dtype)[1]
    if total:
        _region_mask_fwd[(triton.cdiv(total, BLOCK),)](x, masks, noise, mean, std, out, total, nw, d, c, h * w,
                                                       ACC=acc_tl, BLOCK=BLOCK)
    return out
