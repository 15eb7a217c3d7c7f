"""IDC's differentiable augmentation (its `DiffAug`), with the random parameters as a tensor: the
strategy, the parameter layout and `sample_params`.

`sample_params` draws one parameter row per group from keyed streams (rng.py); `ops.diff_augment`
applies rows to samples (`index[n]` = the row of sample n), so one draw shared by a group is the
siamese mode and one row per sample the per-sample mode. Order and constants as IDC:
flip -> color (brightness, saturation, contrast) -> one op from the strategy's list -> cutout.
The input is already normalized, so every zero fill happens in normalized space.
"""
import math
from dataclasses import dataclass

import torch

from . import rng

# The parameter layout, defined here once: the columns of a parameter row, and the codes of the
# strategy's ops. ops/diff_augment.py and kernels/diff_augment.py import it, csrc/common.h spells
# it for C++ and CUDA; tests/ops/test_backends.py holds every backend to it.
FLIP, BRIGHT, SAT, CONTRAST, TX, TY, CUT_X, CUT_Y, SCALE_X, SCALE_Y, ROT, OP = range(12)
NUM_PARAMS = 12
CROP, SCALE, ROTATE = range(3)
OP_CODES = {"crop": CROP, "scale": SCALE, "rotate": ROTATE}

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
    imagenet: bool = False  # 'imagenet': IDC's evaluation chain on ImageNet instead (augment_imagenet.py)

    @classmethod
    def parse(cls, text: str) -> "Strategy":
        if text.lower() in ("", "none"):
            return cls()
        if text.lower() == "imagenet":
            return cls(imagenet=True)
        flags, ops = {"flip": False, "color": False, "cutout": False}, []
        for part in text.lower().split("_"):
            if part in flags:
                flags[part] = True
            elif part in OP_CODES:
                ops.append(part)
            else:
                raise ValueError(f"unknown augmentation {part!r} in strategy {text!r}")
        return cls(ops=tuple(ops), **flags)

    def __str__(self):
        if self.imagenet:
            return "imagenet"
        parts = [n for n in ("color",) if self.color] + list(self.ops)
        parts = (["flip"] if self.flip else []) + parts + (["cutout"] if self.cutout else [])
        return "_".join(parts) or "none"


def crop_shift(size: int) -> int:
    return int(size * RATIO_CROP_PAD + 0.5)


def cutout_size(size: int) -> int:
    return int(size * RATIO_CUTOUT + 0.5)


def sample_params(keys: torch.Tensor, strategy: Strategy, size: int, op_key=None) -> torch.Tensor:
    """[G, NUM_PARAMS] float32 rows, one per key. The op choice is drawn from `op_key` when given
    (IDC draws it once per batch even in per-sample mode; an int, or a device key of rng.key_on),
    else from each row's own key."""
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
    if isinstance(op_key, torch.Tensor):  # a key made on the device: the same draw, computed there
        p[:, OP] = torch.floor(rng.uniform(op_key.reshape(1), 1, torch.float64)[0, 0] * n_ops)
    elif op_key is not None:
        p[:, OP] = math.floor(rng.uniform_host(op_key, 1)[0] * n_ops)  # a host draw: nothing is copied to the device
    else:
        p[:, OP] = torch.floor(u[:, OP] * n_ops)
    return p.float()
