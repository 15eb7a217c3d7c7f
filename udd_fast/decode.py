"""Multi-formation decode (method section 1) and its building block, crop_resize (section 3).

Stored images S hold k x k tiles each; decoding cuts the tiles (after padding right/bottom with 0.5
to a multiple of k) and upsamples each bilinearly to the full size. Decode and UDD's region views
are both `crop_resize` with integer boxes in stored coordinates.
"""
import math

import torch
import torch.nn.functional as F


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


def factor_problem(size: int, factor: int):
    """Why `factor` cannot decode `size`-pixel images, or None when it can: every tile must hold
    stored pixels (the padding alone would make a formation of flat grey)."""
    if factor < 1:
        return "must be >= 1"
    tile = math.ceil(size / factor)
    if (factor - 1) * tile >= size:
        return (f"gives {tile}-pixel tiles at {size} px, so its last row and column of tiles would hold only "
                f"padding; choose a factor whose tiles cover the image (2 is IDC's choice)")
    return None


def formation_boxes(size: int, factor: int, device=None) -> torch.Tensor:
    """[factor^2, 4] boxes (y0, x0, y1, x1) of the k x k grid, tile side ceil(size/k), row-major."""
    s = math.ceil(size / factor)
    b = [(i * s, j * s, i * s + s, j * s + s) for i in range(factor) for j in range(factor)]
    return torch.tensor(b, dtype=torch.int64, device=device)


def decode_plan(num_stored: int, size: int, factor: int, device=None):
    """(src, boxes) that decode `num_stored` images into factor^2 * num_stored formations,
    formation-major: output t * num_stored + m is tile t of stored image m (IDC's order)."""
    boxes = formation_boxes(size, factor, device)
    t = torch.arange(factor * factor, device=device).repeat_interleave(num_stored)
    src = torch.arange(num_stored, device=device).repeat(factor * factor)
    return src, boxes[t]


def mix_init(real: torch.Tensor, ipc: int, factor: int) -> torch.Tensor:
    """IDC's `mix` init for one class: real [ipc*k^2, C, H, W] (the class's first images in dataset
    order) -> [ipc, C, H, W]; tile t of stored image m is real image t*ipc + m, nearest-resized to
    the tile (tile sides split H as IDC does: the first H % k tiles one pixel larger)."""
    n, c, h, w = real.shape
    assert n == ipc * factor * factor, f"mix init needs {ipc * factor * factor} images, got {n}"
    out = real.new_empty(ipc, c, h, w)
    s, rem = h // factor, h % factor
    t, y = 0, 0
    for i in range(factor):
        hr = s + 1 if i < rem else s
        x = 0
        for j in range(factor):
            wr = s + 1 if j < rem else s
            out[:, :, y:y + hr, x:x + wr] = F.interpolate(real[t * ipc:(t + 1) * ipc], size=(hr, wr))
            x += wr
            t += 1
        y += hr
    return out
