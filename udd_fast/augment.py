"""IDC's differentiable augmentation (its `DiffAug`), with the random parameters as a tensor.

`sample_params` draws one parameter row per group from keyed streams (rng.py); `diff_augment_ref`
applies rows to samples (`index[n]` = the row of sample n), so one draw shared by a group is the
siamese mode and one row per sample the per-sample mode. Order and constants as IDC:
flip -> color (brightness, saturation, contrast) -> one op from the strategy's list -> cutout.
The input is already normalized, so every zero fill happens in normalized space.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import rng

# Parameter columns.
FLIP, BRIGHT, SAT, CONTRAST, TX, TY, CUT_X, CUT_Y, SCALE_X, SCALE_Y, ROT, OP = range(12)
NUM_PARAMS = 12

_SINGLE_OPS = ("crop", "scale", "rotate")
RATIO_SCALE = 1.2
RATIO_ROTATE = 15.0
RATIO_CROP_PAD = 0.125
RATIO_CUTOUT = 0.5


@dataclass(frozen=True)
class Strategy:
    """An IDC strategy string such as 'color_crop_cutout' parsed as IDC's DiffAug does."""

    flip: bool = False
    color: bool = False
    cutout: bool = False
    ops: tuple = ()  # one of these is applied per draw (IDC's single_aug=True)

    @classmethod
    def parse(cls, text: str) -> "Strategy":
        if text.lower() in ("", "none"):
            return cls()
        flags, ops = {"flip": False, "color": False, "cutout": False}, []
        for part in text.lower().split("_"):
            if part in flags:
                flags[part] = True
            elif part in _SINGLE_OPS:
                ops.append(part)
            else:
                raise ValueError(f"unknown augmentation {part!r} in strategy {text!r}")
        return cls(ops=tuple(ops), **flags)

    def __str__(self):
        parts = [n for n in ("color",) if self.color] + list(self.ops)
        parts = (["flip"] if self.flip else []) + parts + (["cutout"] if self.cutout else [])
        return "_".join(parts) or "none"


def crop_shift(size: int) -> int:
    return int(size * RATIO_CROP_PAD + 0.5)


def cutout_size(size: int) -> int:
    return int(size * RATIO_CUTOUT + 0.5)


def sample_params(keys: torch.Tensor, strategy: Strategy, size: int, op_key=None) -> torch.Tensor:
    """[G, NUM_PARAMS] float32 rows, one per key. The op choice is drawn from `op_key` when given
    (IDC draws it once per batch even in per-sample mode), else from each row's own key."""
    keys = torch.as_tensor(keys, dtype=torch.int64).reshape(-1)
    u = rng.uniform(keys, NUM_PARAMS, torch.float64)
    p = torch.zeros(keys.shape[0], NUM_PARAMS, dtype=torch.float64, device=keys.device)
    p[:, FLIP] = (u[:, FLIP] < 0.5).double()
    p[:, BRIGHT] = u[:, BRIGHT] - 0.5
    p[:, SAT] = u[:, SAT] * 2.0
    p[:, CONTRAST] = u[:, CONTRAST] + 0.5
    s = crop_shift(size)
    p[:, TX] = torch.floor(u[:, TX] * (2 * s + 1)) - s
    p[:, TY] = torch.floor(u[:, TY] * (2 * s + 1)) - s
    cs = cutout_size(size)
    span = size + (1 - cs % 2)
    p[:, CUT_X] = torch.floor(u[:, CUT_X] * span)
    p[:, CUT_Y] = torch.floor(u[:, CUT_Y] * span)
    p[:, SCALE_X] = u[:, SCALE_X] * (RATIO_SCALE - 1.0 / RATIO_SCALE) + 1.0 / RATIO_SCALE
    p[:, SCALE_Y] = u[:, SCALE_Y] * (RATIO_SCALE - 1.0 / RATIO_SCALE) + 1.0 / RATIO_SCALE
    p[:, ROT] = (u[:, ROT] - 0.5) * 2 * RATIO_ROTATE / 180 * math.pi
    n_ops = max(1, len(strategy.ops))
    if op_key is not None:
        p[:, OP] = torch.floor(rng.uniform(torch.tensor([op_key], device=keys.device), 1, torch.float64)[0, 0] * n_ops)
    else:
        p[:, OP] = torch.floor(u[:, OP] * n_ops)
    return p.float()


def _translate(x, tx, ty):
    """out[n, :, i, j] = x[n, :, i + tx[n], j + ty[n]], zero where that falls outside."""
    n, _, h, w = x.shape
    si = torch.arange(h, device=x.device) + tx.view(n, 1)
    sj = torch.arange(w, device=x.device) + ty.view(n, 1)
    valid = ((si >= 0) & (si < h)).unsqueeze(2) & ((sj >= 0) & (sj < w)).unsqueeze(1)
    b = torch.arange(n, device=x.device).view(n, 1, 1)
    g = x.permute(0, 2, 3, 1)[b, si.clamp(0, h - 1).unsqueeze(2), sj.clamp(0, w - 1).unsqueeze(1)]
    return g.permute(0, 3, 1, 2) * valid.unsqueeze(1).to(x.dtype)


def _cutout_mask(shape, cx, cy, device, dtype):
    """1 everywhere but a square of side cutout_size centred at (cx, cy), clipped at the border."""
    n, _, h, w = shape
    cs_h, cs_w = cutout_size(h), cutout_size(w)
    r0 = cx.view(n, 1) - cs_h // 2
    c0 = cy.view(n, 1) - cs_w // 2
    rows = torch.arange(h, device=device).view(1, h)
    cols = torch.arange(w, device=device).view(1, w)
    in_r = (rows >= r0) & (rows < r0 + cs_h)
    in_c = (cols >= c0) & (cols < c0 + cs_w)
    return (~(in_r.unsqueeze(2) & in_c.unsqueeze(1))).to(dtype).unsqueeze(1)


def _affine(x, theta):
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _scale(x, sx, sy):
    z = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, z, z], -1), torch.stack([z, sy, z], -1)], 1)
    return _affine(x, theta.to(x.dtype))


def _rotate(x, t):
    z = torch.zeros_like(t)
    theta = torch.stack([torch.stack([torch.cos(t), torch.sin(-t), z], -1),
                         torch.stack([torch.sin(t), torch.cos(t), z], -1)], 1)
    return _affine(x, theta.to(x.dtype))


def diff_augment_ref(x: torch.Tensor, params: torch.Tensor, strategy: Strategy, index=None) -> torch.Tensor:
    """Plain-PyTorch reference: augment normalized images x [N,C,H,W] with rows params[index[n]]."""
    n = x.shape[0]
    p = params if index is None else params[index]
    assert p.shape == (n, NUM_PARAMS), f"params {tuple(p.shape)} do not match {n} samples"
    p = p.to(x.dtype)
    col = lambda k: p[:, k].view(n, 1, 1, 1)  # noqa: E731
    if strategy.flip:
        x = torch.where(col(FLIP) > 0.5, x.flip(3), x)
    if strategy.color:
        x = x + col(BRIGHT)
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * col(SAT) + m
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - m) * col(CONTRAST) + m
    if strategy.ops:
        outs = []
        for name in strategy.ops:
            if name == "crop":
                outs.append(_translate(x, p[:, TX].long(), p[:, TY].long()))
            elif name == "scale":
                outs.append(_scale(x, p[:, SCALE_X], p[:, SCALE_Y]))
            else:
                outs.append(_rotate(x, p[:, ROT]))
        if len(outs) == 1:
            x = outs[0]
        else:
            op = p[:, OP].long().view(n, 1, 1, 1)
            x = sum(torch.where(op == i, o, torch.zeros_like(o)) for i, o in enumerate(outs))
    if strategy.cutout:
        x = x * _cutout_mask(x.shape, p[:, CUT_X].long(), p[:, CUT_Y].long(), x.device, x.dtype)
    return x
