"""Multi-formation decode (docs/method.md section 1): its plan, and IDC's mix init.

Stored images S hold k x k tiles each; decoding cuts the tiles (after padding right/bottom with 0.5
to a multiple of k) and upsamples each bilinearly to the full size. Decode and UDD's region views
are both `ops.crop_resize` (section 3) with integer boxes in stored coordinates: `decode_plan` gives
the decode's, `decode_all` applies it, `training_set` adds the region views: what an evaluation
trains on.
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import ops


class RegionViews(NamedTuple):
    """UDD's region views of a stored set: view i is box `boxes[i]` (y0, x0, y1, x1) [M, 4], in stored
    pixels, of stored image `src[i]` [M], resized to the full size (docs/method.md section 2)."""
    src: torch.Tensor
    boxes: torch.Tensor


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


def decode_all(images: torch.Tensor, labels: torch.Tensor, factor: int):
    """Every stored image decoded into its factor^2 formations (labels repeated)."""
    if factor <= 1:
        return images, labels
    src, boxes = decode_plan(images.shape[0], images.shape[-1], factor, images.device)
    return ops.crop_resize(images, src, boxes, images.shape[-2:]), labels[src]


def training_set(images: torch.Tensor, labels: torch.Tensor, factor: int, views: RegionViews = None):
    """What an evaluation trains on, in [0,1]: the formations of every stored image, plus UDD's region
    views when given. Whether a set's views are used is decided in one place: Result.training_set."""
    images = images.float().clamp(0, 1)
    labels = labels.long()
    x, y = decode_all(images, labels, factor)
    if views is not None:
        src, boxes = (t.to(images.device).long() for t in views)
        x = torch.cat([x, ops.crop_resize(images, src, boxes, images.shape[-2:])])
        y = torch.cat([y, labels[src]])
    return x, y
