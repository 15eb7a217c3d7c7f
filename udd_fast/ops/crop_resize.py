"""crop_resize, forward and backward: per output sample, a box of a stored image resized bilinearly.
Multi-formation decode (decode.py) and UDD's region views are both this op with integer boxes.

Kernels: kernels/crop_resize.py (Triton), csrc/crop_resize_cpu.cpp, csrc/crop_resize_cuda.cu.
"""
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .backend import _check, _load, resolve


def crop_resize_ref(images: torch.Tensor, src: torch.Tensor, boxes: torch.Tensor, out_size) -> torch.Tensor:
    """Plain-PyTorch reference: out[n] = bilinear resize (align_corners=False) of
    pad_right_bottom(images[src[n]], 0.5)[:, y0:y1, x0:x1] to out_size, boxes[n] = (y0, x0, y1, x1).

    Crop first, then resize, so nothing outside the box is read. Samples that share a box size are
    resized in one call.
    """
    oh, ow = out_size
    src = src.long()
    boxes = boxes.long()
    n, (c, h, w) = src.shape[0], images.shape[1:]
    if n == 0:
        return images.new_zeros(0, c, oh, ow)
    if bool((boxes[:, 2] <= boxes[:, 0]).any() or (boxes[:, 3] <= boxes[:, 1]).any() or (boxes[:, :2] < 0).any()):
        raise ValueError("crop_resize: every box needs 0 <= y0 < y1 and 0 <= x0 < x1")
    ph = max(0, int(boxes[:, 2].max()) - h)
    pw = max(0, int(boxes[:, 3].max()) - w)
    padded = F.pad(images, (0, pw, 0, ph), value=0.5) if ph or pw else images
    out = images.new_empty(n, c, oh, ow)
    sizes = boxes[:, 2:] - boxes[:, :2]
    for bh, bw in torch.unique(sizes, dim=0).tolist():
        sel = torch.nonzero((sizes[:, 0] == bh) & (sizes[:, 1] == bw)).flatten()
        rows = boxes[sel, 0:1] + torch.arange(bh, device=images.device)
        cols = boxes[sel, 1:2] + torch.arange(bw, device=images.device)
        crops = padded[src[sel].view(-1, 1, 1), :, rows.unsqueeze(2), cols.unsqueeze(1)]  # [m,bh,bw,C]
        crops = crops.permute(0, 3, 1, 2)
        out[sel] = F.interpolate(crops, size=(oh, ow), mode="bilinear", align_corners=False)
    return out


def plan_ok(src: torch.Tensor, boxes: torch.Tensor, n_images: int) -> torch.Tensor:
    """A 0-dim bool tensor: every box has 0 <= y0 < y1 and 0 <= x0 < x1, every src an image index."""
    return ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (boxes[:, :2] >= 0).all(1)
            & (src >= 0) & (src < n_images)).all()


class _CropResize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, images, src, boxes, oh, ow, mod):
        ctx.save_for_backward(src, boxes)
        ctx.meta = (mod, images.shape)
        return mod.crop_resize_forward(images, src, boxes, oh, ow)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        src, boxes = ctx.saved_tensors
        mod, (m, _, h, w) = ctx.meta
        g = mod.crop_resize_backward(grad.contiguous(), src, boxes, m, h, w) if ctx.needs_input_grad[0] else None
        return g, None, None, None, None, None


def crop_resize(images, src, boxes, out_size, validate=True):
    """Per output sample: crop images[src[n]] (padded right/bottom with 0.5) to the integer box
    boxes[n] = (y0, x0, y1, x1), then resize bilinearly to out_size. See crop_resize_ref.
    validate=False skips the box and index check: for a caller that checked its plan once (the
    distillation loop), so that no device work or host read is spent on it per call."""
    name = resolve(images)
    n = int(src.shape[0])
    if name == "torch" or n == 0:
        return crop_resize_ref(images, src, boxes, out_size)
    oh, ow = (int(s) for s in out_size)
    src = src.to(images.device, torch.int64).reshape(-1).contiguous()
    boxes = boxes.to(images.device, torch.int64).reshape(n, 4).contiguous()
    if not validate:
        return _CropResize.apply(images.contiguous(), src, boxes, oh, ow, _load(name))
    _check(plan_ok(src, boxes, images.shape[0]), "crop_resize: every box needs 0 <= y0 < y1 and 0 <= x0 < x1, every src an image index")
    return _CropResize.apply(images.contiguous(), src, boxes, oh, ow, _load(name))
