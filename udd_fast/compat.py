"""Drop-in replacements for IDC's decode, differentiable augmentation and matching loss.

Same call shapes and results as the functions in IDC's code (snu-mllab/Efficient-Dataset-Condensation),
routed to udd_fast's ops, so an IDC-style condense loop can switch by changing its imports
(docs/drop-in.md):

    decode_zoom(img, target, factor)   IDC's Synthesizer.decode_zoom: -> (data, target), formation-major
    decode(img, target, factor)        IDC's Synthesizer.decode with decode_type 'single'
    subsample(data, target, max_size)  IDC's Synthesizer.subsample (np.random.permutation)
    DiffAug(strategy, batch, ratio_cutout, single)(x, single_aug=True, seed=-1)
    dist(x, y, method)                 'mse', 'l1', 'l1_mean', 'cos'
    matchloss(args, img_real, img_syn, lab_real, lab_syn, model)   args.match == 'grad'

DiffAug draws its random numbers from the same global generators, in the same order and with the
same distributions as IDC's (np.random for batch=True and for the op choice and for scale/rotate;
torch.rand / torch.randint on x.device for the other per-sample draws), so with the same seeds it
gives IDC's output and leaves both generators in the same state. The draws become one parameter
tensor and one `ops.diff_augment` call (several calls only where IDC applies parts out of the
order flip -> color -> one op -> cutout).

Supported strategy parts: flip, color, crop, scale, rotate, cutout, translate (crop with no row
shift); single_aug True and False; single=True; seed. Not supported (ValueError at construction):
'noise' and any other part IDC's DiffAug has no function for (IDC itself fails with KeyError when it
draws one), and ratio_cutout other than 0.5 when the strategy has cutout (ops' cutout size is fixed).

Autograd: gradients reach the input images through decode and DiffAug (first order; the ops have no
double backward, which IDC's loop never needs: its double backward is through the network only).
"""
import functools

import numpy as np
import torch
import torch.nn.functional as F

from . import ops
from .augment import (BRIGHT, CONTRAST, CUT_X, CUT_Y, FLIP, NUM_PARAMS, RATIO_CUTOUT, ROT, SAT, SCALE_X,
                      SCALE_Y, TX, TY, Strategy)
from .decode import decode_plan
from .matching import match_distance

__all__ = ["decode_zoom", "decode", "subsample", "DiffAug", "dist", "matchloss"]


# -- decode -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _plan(n, size, factor, device):
    # The loop decodes the same shapes every step; building the plan costs ~35 us on a CPU.
    return decode_plan(n, size, factor, device)


def decode_zoom(img, target, factor):
    """IDC's uniform multi-formation: pad right/bottom with 0.5 to a multiple of `factor`, cut the
    factor x factor tiles, upsample each bilinearly to the input size. Output t * n + m is tile t of
    image m (formation-major); the targets are repeated factor^2 times."""
    n, _, h, w = img.shape
    if h != w:
        # IDC derives the tile side from the width alone; only square images decode as intended.
        raise ValueError(f"decode_zoom: square images only, got {h}x{w}")
    src, boxes = _plan(n, w, factor, img.device)
    data = ops.crop_resize(img, src, boxes, (h, w))
    return data, target.repeat(factor * factor)


def decode(img, target, factor):
    """IDC's Synthesizer.decode for decode_type 'single' (its default): decode_zoom when factor > 1."""
    if factor > 1:
        return decode_zoom(img, target, factor)
    return img, target


def subsample(data, target, max_size=-1):
    """IDC's Synthesizer.subsample: a random subset of max_size samples (np.random.permutation)."""
    if data.shape[0] > max_size > 0:
        indices = np.random.permutation(data.shape[0])
        data = data[indices[:max_size]]
        target = target[indices[:max_size]]
    return data, target


# -- DiffAug ------------------------------------------------------------------------------------
# Position of each part in ops.diff_augment's fixed order (flip -> color -> one op -> cutout).
_RANK = {"flip": 0, "color": 1, "crop": 2, "translate": 2, "scale": 2, "rotate": 2, "cutout": 3}


class DiffAug:
    """IDC's DiffAug: same constructor, same __call__, same random draws; see the module docstring."""

    def __init__(self, strategy="color_crop_cutout_flip_scale_rotate", batch=False, ratio_cutout=0.5,
                 single=False):
        # IDC's constants (ops.diff_augment uses the same ones).
        self.prob_flip = 0.5
        self.ratio_scale = 1.2
        self.ratio_rotate = 15.0
        self.ratio_crop_pad = 0.125
        self.ratio_cutout = ratio_cutout
        self.brightness = 1.0
        self.saturation = 2.0
        self.contrast = 0.5
        self.batch = batch

        self.aug = not (strategy == "" or strategy.lower() == "none")
        self.strategy, self.flip, self.color, self.cutout = [], False, False, False
        if not self.aug:
            return
        for part in strategy.lower().split("_"):
            if part not in _RANK:
                raise ValueError(f"DiffAug: strategy part {part!r} of {strategy!r} is not supported "
                                 f"(supported: {', '.join(sorted(_RANK))})")
            if part in ("flip", "color", "cutout") and not single:
                setattr(self, part, True)
            else:
                self.strategy.append(part)
        if (self.cutout or "cutout" in self.strategy) and ratio_cutout != RATIO_CUTOUT:
            raise ValueError(f"DiffAug: cutout with ratio_cutout={ratio_cutout} is not supported "
                             f"(udd_fast.ops uses {RATIO_CUTOUT})")

    def set_seed(self, seed):
        if seed > 0:  # as IDC: seed 0 and -1 leave the generators alone
            np.random.seed(seed)
            torch.random.manual_seed(seed)

    def __call__(self, x, single_aug=True, seed=-1):
        if not self.aug:
            return x
        # Parts in IDC's application order; the op choice is drawn after the flip and color draws.
        groups = []  # [(parts, params)]: consecutive parts that one ops call can apply
        if self.flip:
            self._draw(groups, "flip", x, seed)
        if self.color:
            self._draw(groups, "color", x, seed)
        if self.strategy:
            if single_aug:
                self._draw(groups, self.strategy[np.random.randint(len(self.strategy))], x, seed)
            else:
                for part in self.strategy:
                    self._draw(groups, part, x, seed)
        if self.cutout:
            self._draw(groups, "cutout", x, seed)

        n = x.shape[0]
        index = torch.zeros(n, dtype=torch.int64, device=x.device) if self.batch else None
        for parts, params in groups:
            op = [("crop" if p == "translate" else p) for p in parts if _RANK[p] == 2]
            strategy = Strategy(flip="flip" in parts, color="color" in parts, cutout="cutout" in parts,
                                ops=tuple(op))
            x = ops.diff_augment(x, params, strategy, index)
        return x.contiguous()

    def _params(self, groups, part, x):
        """The params tensor for `part`: the current group's, or a new group's when ops cannot
        apply `part` after the group's parts in the same pass."""
        if not groups or _RANK[part] <= _RANK[groups[-1][0][-1]]:
            rows = 1 if self.batch else x.shape[0]
            groups.append(([], torch.zeros(rows, NUM_PARAMS, dtype=torch.float64, device=x.device)))
        parts, params = groups[-1]
        parts.append(part)
        return params

    def _uniform(self, x):
        """One U[0,1) draw per row as IDC's color functions make it: numpy scalar (batch) or
        torch.rand(N,1,1,1) in x's dtype on x's device."""
        if self.batch:
            return torch.tensor([np.random.uniform()], dtype=torch.float64, device=x.device)
        return torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).view(-1)

    def _randint(self, x, low, high):
        if self.batch:
            return torch.tensor([np.random.randint(low, high)], dtype=torch.float64, device=x.device)
        return torch.randint(low, high, size=[x.shape[0], 1, 1], device=x.device).view(-1)

    def _numpy_uniform(self, x):
        # IDC's scale and rotate draw from numpy even per sample.
        u = np.random.uniform() if self.batch else np.random.uniform(size=x.shape[0])
        return torch.as_tensor(np.atleast_1d(u), dtype=torch.float64, device=x.device)

    def _draw(self, groups, part, x, seed):
        """Draw `part`'s random numbers exactly as IDC's function(s) for it, into a params row."""
        p = self._params(groups, part, x)
        h, w = x.shape[2], x.shape[3]
        if part == "flip":
            self.set_seed(seed)
            if self.batch:
                p[:, FLIP] = float(np.random.uniform() < self.prob_flip)
            else:
                p[:, FLIP] = (torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self.prob_flip).view(-1).double()
        elif part == "color":  # brightness, saturation, contrast: one seed reset and one draw each
            self.set_seed(seed)
            p[:, BRIGHT] = (self._uniform(x) - 0.5) * self.brightness
            self.set_seed(seed)
            p[:, SAT] = self._uniform(x) * self.saturation
            self.set_seed(seed)
            p[:, CONTRAST] = self._uniform(x) + self.contrast
        elif part == "crop":
            self.set_seed(seed)
            sx, sy = int(h * self.ratio_crop_pad + 0.5), int(w * self.ratio_crop_pad + 0.5)
            p[:, TX] = self._randint(x, -sx, sx + 1)
            p[:, TY] = self._randint(x, -sy, sy + 1)
        elif part == "translate":  # IDC's translate_fn shifts columns only
            self.set_seed(seed)
            sy = int(w * self.ratio_crop_pad + 0.5)
            p[:, TY] = self._randint(x, -sy, sy + 1)
        elif part == "scale":
            self.set_seed(seed)
            r = self.ratio_scale
            p[:, SCALE_X] = self._numpy_uniform(x) * (r - 1.0 / r) + 1.0 / r
            p[:, SCALE_Y] = self._numpy_uniform(x) * (r - 1.0 / r) + 1.0 / r
        elif part == "rotate":
            self.set_seed(seed)
            p[:, ROT] = (self._numpy_uniform(x) - 0.5) * 2 * self.ratio_rotate / 180 * float(np.pi)
        elif part == "cutout":
            self.set_seed(seed)
            ch, cw = int(h * self.ratio_cutout + 0.5), int(w * self.ratio_cutout + 0.5)
            p[:, CUT_X] = self._randint(x, 0, h + (1 - ch % 2))
            p[:, CUT_Y] = self._randint(x, 0, w + (1 - cw % 2))


# -- matching loss ------------------------------------------------------------------------------
def dist(x, y, method="mse"):
    """IDC's distance objectives between two tensors (gradients of one layer)."""
    if method in ("mse", "l1"):
        return match_distance(x, y, method, tuple(range(x.dim())))
    if method == "l1_mean":
        return (x - y).abs().reshape(x.shape[0], -1).mean(-1).sum()
    if method == "cos":
        x = x.reshape(x.shape[0], -1)
        y = y.reshape(y.shape[0], -1)
        return torch.sum(1 - torch.sum(x * y, dim=-1) / (torch.norm(x, dim=-1) * torch.norm(y, dim=-1) + 1e-6))
    raise ValueError(f"dist: unknown method {method!r} (mse, l1, l1_mean or cos)")


def _matched(param, args):
    """IDC's selection: 1-D parameters (biases, norms) only with args.bias, 2-D (fc) only with args.fc."""
    if param.dim() == 1:
        return bool(getattr(args, "bias", False))
    if param.dim() == 2:
        return bool(getattr(args, "fc", False))
    return True


def matchloss(args, img_real, img_syn, lab_real, lab_syn, model):
    """IDC's gradient matching loss: sum over the selected parameters of
    dist(grad of CE on the real batch (detached), grad of CE on the synthetic batch (create_graph),
    args.metric). Defaults as IDC's argparse: match 'grad', metric 'l1', bias and fc False.
    Returns None when no parameter is selected, as IDC's."""
    match = getattr(args, "match", "grad")
    if match != "grad":
        raise ValueError(f"matchloss: args.match {match!r} is not supported (only 'grad')")
    metric = getattr(args, "metric", "l1")
    params = [p for p in model.parameters() if _matched(p, args)]
    if not params:
        return None
    # Only the matched gradients are taken (IDC takes all, then skips some): same values, less work.
    g_real = torch.autograd.grad(F.cross_entropy(model(img_real), lab_real), params)
    g_syn = torch.autograd.grad(F.cross_entropy(model(img_syn), lab_syn), params, create_graph=True)
    loss = None
    for gr, gs in zip(g_real, g_syn):
        d = dist(gr.detach(), gs, method=metric)
        loss = d if loss is None else loss + d
    return loss
