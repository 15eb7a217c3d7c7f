"""Multi-formation decode (docs/method.md section 1): its plan, and IDC's mix init.

Stored images S hold k x k tiles each; decoding (IDC's `single` decode type) cuts the tiles (after padding right/bottom with 0.5
to a multiple of k) and upsamples each bilinearly to the full size. Decode and UDD's region views
are both `ops.crop_resize` (section 3) with integer boxes in stored coordinates: `decode_plan` gives
the decode's, `decode_all` applies it, `training_set` adds the region views: what an evaluation
trains on. IDC's other decode types, `multi` and `bound`, are plans of the same kind.
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import ops

DECODE_TYPES = ("single", "multi", "bound")


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


def _zoom_plan(first: int, count: int, size: int, factor: int, device=None):
    """(src, boxes) decoding stored images first .. first+count-1 at `factor`, formation-major (IDC's
    decode_zoom: output t * count + m is tile t of image first + m)."""
    boxes = formation_boxes(size, factor, device)
    t = torch.arange(factor * factor, device=device).repeat_interleave(count)
    src = first + torch.arange(count, device=device).repeat(factor * factor)
    return src, boxes[t]


def bound_parts(num_stored: int, factor: int, bound: int) -> list:
    """IDC's decode_zoom_bound: [(first image, count, factor)], the largest factors first, each taking as
    many of the remaining images as keep the decoded total (the rest counted at factor 1) within `bound`;
    the last part, factor 1, takes what remains. (Where num_stored > bound, IDC's slice would run
    backwards; no image is then decoded above factor 1.)"""
    parts, first, budget, total = [], 0, num_stored, 0
    room = bound - num_stored
    for f in range(factor, 0, -1):
        count = max(0, min(room // (f * f), budget)) if f > 1 else budget
        parts.append((first, count, f))
        first, budget, total = first + count, budget - count, total + count * f * f
        room = bound - total - budget
        if budget == 0:
            break
    return parts


def decode_plan(num_stored: int, size: int, factor: int, device=None, decode_type: str = "single",
                bound: int = 128):
    """(src, boxes) that decode `num_stored` images of one class (or, single and multi, any set):
    single: factor^2 * num_stored formations, formation-major (output t * num_stored + m is tile t of
    stored image m, IDC's order); multi: single's plan at every factor 1 .. k, concatenated (IDC's
    decode_zoom_multi); bound: IDC's decode_zoom_bound within `bound` (bound_parts)."""
    if decode_type not in DECODE_TYPES:
        raise ValueError(f"unknown decode type {decode_type!r}; choose one of {', '.join(DECODE_TYPES)}")
    if factor <= 1 or decode_type == "single":
        parts = [(0, num_stored, factor)]
    elif decode_type == "multi":
        parts = [(0, num_stored, f) for f in range(1, factor + 1)]
    else:
        parts = bound_parts(num_stored, factor, bound)
    plans = [_zoom_plan(first, count, size, f, device) for first, count, f in parts if count]
    return torch.cat([p[0] for p in plans]), torch.cat([p[1] for p in plans])


def eval_decode_type(decode_type: str) -> str:
    """How an evaluation decodes a set distilled with `decode_type`: IDC's test.py decodes multi as multi and
    everything else (bound included) as single."""
    return "multi" if decode_type == "multi" else "single"


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


def decode_all(images: torch.Tensor, labels: torch.Tensor, factor: int, decode_type: str = "single"):
    """Every stored image decoded into its formations (labels repeated): factor^2 each (single), or those of
    every factor 1..k (multi)."""
    if factor <= 1:
        return images, labels
    if decode_type not in ("single", "multi"):
        raise ValueError(f"a whole set decodes single or multi, not {decode_type!r} (see eval_decode_type)")
    src, boxes = decode_plan(images.shape[0], images.shape[-1], factor, images.device, decode_type)
    return ops.crop_resize(images, src, boxes, images.shape[-2:]), labels[src]


def training_set(images: torch.Tensor, labels: torch.Tensor, factor: int, views: RegionViews = None,
                 decode_type: str = "single"):
    """What an evaluation trains on, in [0,1]: the formations of every stored image (decoded as
    eval_decode_type(decode_type)), plus UDD's region views when given. Whether a set's views are used is
    decided in one place: Result.training_set."""
    images = images.float().clamp(0, 1)
    labels = labels.long()
    x, y = decode_all(images, labels, factor, eval_decode_type(decode_type))
    if views is not None:
        src, boxes = (t.to(images.device).long() for t in views)
        x = torch.cat([x, ops.crop_resize(images, src, boxes, images.shape[-2:])])
        y = torch.cat([y, labels[src]])
    return x, y
