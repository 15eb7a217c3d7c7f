"""crop_resize, forward and backward: per output sample, a box of a stored image resized bilinearly.
Multi-formation decode (decode.py) and UDD's region views are both this op with integer boxes.

Kernels: kernels/crop_resize.py (Triton), csrc/crop_resize_cpu.cpp, csrc/crop_resize_cuda.cu.
"""
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .backend import _acc_dtype, _check, _load, resolve

_BAD_PLAN = "crop_resize: every box needs 0 <= y0 < y1 and 0 <= x0 < x1, every src an image index"


def _taps(start, end, size, acc):
    """For each sample's span [start, end) of rows (or columns) resized to `size`: per output index, the
    two source positions and the second one's weight, [n, size] each. F.interpolate's bilinear source
    index (align_corners=False: scale = span / size in `acc`, (dst + 0.5) * scale - 0.5 clamped at 0),
    written as csrc/common.h's source_index so that the reference and the kernels round alike."""
    span = (end - start).unsqueeze(1)
    scale = span.to(acc) / size
    s = ((torch.arange(size, device=start.device, dtype=acc) + 0.5) * scale - 0.5).clamp_min(0)
    i0 = torch.minimum(s.long(), span - 1)  # s >= 0, so the cast is a floor
    i1 = i0 + (i0 < span - 1).long()
    return start.unsqueeze(1) + i0, start.unsqueeze(1) + i1, s - i0.to(acc)


def crop_resize_ref(images: torch.Tensor, src: torch.Tensor, boxes: torch.Tensor, out_size,
                    validate: bool = True) -> torch.Tensor:
    """Plain-PyTorch reference: out[n] = bilinear resize (align_corners=False, as F.interpolate) of
    pad_right_bottom(images[src[n]], 0.5)[:, y0:y1, x0:x1] to out_size, boxes[n] = (y0, x0, y1, x1).

    Every output pixel blends the four taps the kernels blend, gathered by index, so nothing outside
    the box reaches the output or takes gradient, and nothing is read back to the host: this is the
    torch backend of the distillation loop. Computed in float32 (float64 for float64 images).
    validate=False skips the check of boxes and sources (on the CPU a host read), for a caller that
    checked its plan once."""
    oh, ow = (int(s) for s in out_size)
    n, (c, h, w) = src.shape[0], images.shape[1:]
    src = src.to(images.device, torch.int64).reshape(-1)
    boxes = boxes.to(images.device, torch.int64).reshape(n, 4)
    if validate:
        _check(plan_ok(src, boxes, images.shape[0]), _BAD_PLAN)
    if n == 0:
        return images.new_zeros(0, c, oh, ow)
    acc = _acc_dtype(images.dtype)
    r0, r1, ly = _taps(boxes[:, 0], boxes[:, 2], oh, acc)
    c0, c1, lx = _taps(boxes[:, 1], boxes[:, 3], ow, acc)
    # One row and one column of 0.5 after the image: every position past the image reads them.
    x = F.pad(images.to(acc), (0, 1, 0, 1), value=0.5).index_select(0, src)  # [n, C, H+1, W+1]
    c0, c1 = (i.clamp_max(w).view(n, 1, 1, ow).expand(n, c, h + 1, ow) for i in (c0, c1))
    r0, r1 = (i.clamp_max(h).view(n, 1, oh, 1).expand(n, c, oh, ow) for i in (r0, r1))
    lx, ly = lx.view(n, 1, 1, ow), ly.view(n, 1, oh, 1)
    # Separable, columns first (each row's blend of columns c0, c1, then rows r0, r1 of those): the
    # kernels' top/bottom order, so that both round alike.
    t = (1 - lx) * x.gather(3, c0) + lx * x.gather(3, c1)  # [n, C, H+1, ow]
    return ((1 - ly) * t.gather(2, r0) + ly * t.gather(2, r1)).to(images.dtype)


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
    n = src.shape[0]
    oh, ow = (int(s) for s in out_size)
    src = src.to(images.device, torch.int64).reshape(-1).contiguous()
    boxes = boxes.to(images.device, torch.int64).reshape(n, 4).contiguous()
    if validate:
        _check(plan_ok(src, boxes, images.shape[0]), _BAD_PLAN)
    if name == "torch" or n == 0:
        return crop_resize_ref(images, src, boxes, (oh, ow), validate=False)
    return _CropResize.apply(images.contiguous(), src, boxes, oh, ow, _load(name))
