"""crop_resize in Triton: one lane per output element (n, c, oy, ox); backward scatters with atomic
adds into a float32 (float64 for double) buffer."""
import torch
import triton
import triton.language as tl

from .utils import acc_types

BLOCK = 256


@triton.jit
def _source_index(dst, size, scale):
    """PyTorch's bilinear source index, align_corners=False: (i0, i1, weight of i1)."""
    s = tl.maximum((dst.to(scale.dtype) + 0.5) * scale - 0.5, 0.0)
    i0 = tl.minimum(s.to(tl.int32), size - 1)  # s >= 0, so the cast is a floor
    i1 = i0 + (i0 < size - 1).to(tl.int32)
    return i0, i1, s - i0.to(scale.dtype)


@triton.jit
def _taps(offs, live, src_ptr, box_ptr, C, OH, OW, ACC: tl.constexpr):
    ox = offs % OW
    oy = (offs // OW) % OH
    c = (offs // (OW * OH)) % C
    n = offs // (OW * OH * C)
    m = tl.load(src_ptr + n, mask=live, other=0).to(tl.int32)
    y0 = tl.load(box_ptr + 4 * n, mask=live, other=0).to(tl.int32)
    x0 = tl.load(box_ptr + 4 * n + 1, mask=live, other=0).to(tl.int32)
    bh = tl.load(box_ptr + 4 * n + 2, mask=live, other=1).to(tl.int32) - y0
    bw = tl.load(box_ptr + 4 * n + 3, mask=live, other=1).to(tl.int32) - x0
    iy0, iy1, ly = _source_index(oy, bh, bh.to(ACC) / OH)
    ix0, ix1, lx = _source_index(ox, bw, bw.to(ACC) / OW)
    return m, c, y0 + iy0, y0 + iy1, x0 + ix0, x0 + ix1, ly, lx


@triton.jit
def _crop_resize_fwd(img_ptr, src_ptr, box_ptr, out_ptr, total, C, H, W, OH, OW,
                     ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < total
    m, c, r0, r1, c0, c1, ly, lx = _taps(offs, live, src_ptr, box_ptr, C, OH, OW, ACC)
    plane = img_ptr + (m.to(tl.int64) * C + c) * H * W
    # Reads past the image (row >= H or col >= W) are the 0.5 padding.
    v00 = tl.load(plane + r0 * W + c0, mask=live & (r0 < H) & (c0 < W), other=0.5).to(ACC)
    v01 = tl.load(plane + r0 * W + c1, mask=live & (r0 < H) & (c1 < W), other=0.5).to(ACC)
    v10 = tl.load(plane + r1 * W + c0, mask=live & (r1 < H) & (c0 < W), other=0.5).to(ACC)
    v11 = tl.load(plane + r1 * W + c1, mask=live & (r1 < H) & (c1 < W), other=0.5).to(ACC)
    top = (1 - lx) * v00 + lx * v01
    bot = (1 - lx) * v10 + lx * v11
    out = (1 - ly) * top + ly * bot
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=live)


@triton.jit
def _crop_resize_bwd(g_ptr, src_ptr, box_ptr, gimg_ptr, total, C, H, W, OH, OW,
                     ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < total
    m, c, r0, r1, c0, c1, ly, lx = _taps(offs, live, src_ptr, box_ptr, C, OH, OW, ACC)
    g = tl.load(g_ptr + offs, mask=live, other=0).to(ACC)
    plane = gimg_ptr + (m.to(tl.int64) * C + c) * H * W
    # The padding takes no gradient.
    tl.atomic_add(plane + r0 * W + c0, (1 - ly) * (1 - lx) * g, mask=live & (r0 < H) & (c0 < W))
    tl.atomic_add(plane + r0 * W + c1, (1 - ly) * lx * g, mask=live & (r0 < H) & (c1 < W))
    tl.atomic_add(plane + r1 * W + c0, ly * (1 - lx) * g, mask=live & (r1 < H) & (c0 < W))
    tl.atomic_add(plane + r1 * W + c1, ly * lx * g, mask=live & (r1 < H) & (c1 < W))


def crop_resize_forward(images, src, boxes, oh, ow):
    images, src, boxes = images.contiguous(), src.long().contiguous(), boxes.long().contiguous()
    n, (c, h, w) = src.shape[0], images.shape[1:]
    out = torch.empty(n, c, oh, ow, dtype=images.dtype, device=images.device)
    total = out.numel()
    if total:
        _crop_resize_fwd[(triton.cdiv(total, BLOCK),)](images, src, boxes, out, total, c, h, w, oh, ow,
                                                       ACC=acc_types(images.dtype)[1], BLOCK=BLOCK)
    return out


def crop_resize_backward(grad_out, src, boxes, num_images, h, w):
    grad_out, src, boxes = grad_out.contiguous(), src.long().contiguous(), boxes.long().contiguous()
    n, c, oh, ow = grad_out.shape
    acc_t, acc_tl = acc_types(grad_out.dtype)
    gimg = torch.zeros(num_images, c, h, w, dtype=acc_t, device=grad_out.device)
    total = grad_out.numel()
    if total:
        _crop_resize_bwd[(triton.cdiv(total, BLOCK),)](grad_out, src, boxes, gimg, total, c, h, w, oh, ow,
                                                       ACC=acc_tl, BLOCK=BLOCK)
    return gimg.to(grad_out.dtype)
