"""diff_augment, forward and backward: IDC's DiffAug applied with a tensor of parameter rows, in
IDC's order flip -> color (brightness, saturation, contrast) -> one op of the strategy's -> cutout.
The strategy, the parameter layout and their sampling are augment.py's.

Kernels: kernels/diff_augment.py (Triton), csrc/diff_augment_cpu.cpp, csrc/diff_augment_cuda.cu.
"""
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..augment import (BRIGHT, CONTRAST, CUT_X, CUT_Y, FLIP, NUM_PARAMS, OP, OP_CODES, ROT, SAT, SCALE_X, SCALE_Y,
                       TX, TY, Strategy, cutout_size)
from .backend import _acc_dtype, _check, _load, resolve


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


class _DiffAugment(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, params, index, mean, spec, mod):
        ctx.save_for_backward(params, index)
        ctx.meta = (mod, spec)
        return mod.diff_augment_forward(x, params, index, mean, *spec)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        params, index = ctx.saved_tensors
        mod, (flip, color, cutout, ops, cut_h, cut_w) = ctx.meta
        g = None
        if ctx.needs_input_grad[0]:
            g = mod.diff_augment_backward(grad.contiguous(), params, index, flip, color, cutout, ops, cut_h, cut_w)
        return g, None, None, None, None, None


def diff_augment(x, params, strategy, index=None, validate=True):
    """IDC's augmentation with parameters as a tensor. See diff_augment_ref.
    x [N,C,H,W]; params [G, NUM_PARAMS]; index [N] rows of params (siamese groups) or None (G = N).
    Differentiable w.r.t. x only. validate=False skips the check of `index` (a caller that built it
    in range)."""
    if isinstance(strategy, str):
        strategy = Strategy.parse(strategy)
    if strategy.imagenet:
        raise ValueError("diff_augment applies DSA strategies; 'imagenet' is augment_imagenet.imagenet_augment")
    name = resolve(x)
    n, _, h, w = x.shape
    if name == "torch" or n == 0:
        return diff_augment_ref(x, params, strategy, index)
    acc = _acc_dtype(x.dtype)
    p = params.detach().to(x.device, acc).contiguous()
    if index is None:
        idx = torch.arange(n, device=x.device)
        if p.shape != (n, NUM_PARAMS):
            raise AssertionError(f"params {tuple(p.shape)} do not match {n} samples")
    else:
        idx = torch.as_tensor(index, device=x.device).to(torch.int64).reshape(-1).contiguous()
        if p.dim() != 2 or p.shape[1] != NUM_PARAMS or idx.shape[0] != n:
            raise AssertionError(f"params {tuple(p.shape)} / index {tuple(idx.shape)} do not match {n} samples")
        if validate:
            _check(((idx >= 0) & (idx < p.shape[0])).all(), "diff_augment: index out of range of params")
    x = x.contiguous()
    # Contrast's mean after brightness b and saturation is mean(x) + b: one small reduction first.
    mean = x.detach().mean(dim=(1, 2, 3), dtype=acc) if strategy.color else p
    spec = (bool(strategy.flip), bool(strategy.color), bool(strategy.cutout),
            [OP_CODES[o] for o in strategy.ops], cutout_size(h), cutout_size(w))
    return _DiffAugment.apply(x, p, idx, mean, spec, _load(name))
