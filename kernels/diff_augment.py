"""diff_augment in Triton, one pass: one lane per output pixel (n, i, j), all channels in the lane.

The lane finds where its pixel reads the colour-transformed image (crop: an integer shift, one tap;
scale/rotate: affine_grid + grid_sample, bilinear with zeros padding, align_corners=False: four
taps), applies flip to the read position, colour to each tap from that tap's channel mean and the
per-sample mean of x (contrast's mean after brightness b and saturation is mean(x) + b), and zeroes
the cutout square. Backward: atomic scatter through the taps, then a pointwise colour backward.
"""
import torch
import triton
import triton.language as tl

from udd_fast import augment as aug  # the parameter layout: aug.TX is a column, aug.CROP an op code

from .utils import acc_types

BLOCK = 128


@triton.jit
def _position(KIND: tl.constexpr, pb, mask, i, j, H, W, ACC: tl.constexpr):
    """Sampling position (row, col) in the coloured image of output pixel (i, j) under op KIND."""
    if KIND == aug.CROP:
        tx = tl.load(pb + aug.TX, mask=mask, other=0).to(tl.int32)
        ty = tl.load(pb + aug.TY, mask=mask, other=0).to(tl.int32)
        fy = (i + tx).to(ACC)
        fx = (j + ty).to(ACC)
    else:
        xb = (2 * j + 1).to(ACC) / W - 1
        yb = (2 * i + 1).to(ACC) / H - 1
        if KIND == aug.SCALE:
            gx = tl.load(pb + aug.SCALE_X, mask=mask, other=1).to(ACC) * xb
            gy = tl.load(pb + aug.SCALE_Y, mask=mask, other=1).to(ACC) * yb
        else:  # rotate
            t = tl.load(pb + aug.ROT, mask=mask, other=0).to(ACC)
            co = tl.cos(t)
            si = tl.sin(t)
            gx = co * xb - si * yb
            gy = si * xb + co * yb
        fx = ((gx + 1) * W - 1) / 2
        fy = ((gy + 1) * H - 1) / 2
    return fy, fx


@triton.jit
def _setup(offs, total, p_ptr, idx_ptr, H, W, CUT_H, CUT_W, DO_FLIP: tl.constexpr,
           CUTOUT: tl.constexpr, NOPS: tl.constexpr, OP0: tl.constexpr, OP1: tl.constexpr, OP2: tl.constexpr,
           ACC: tl.constexpr):
    """Per lane: sample n, output (i, j), parameter row pointer, flip flag, whether the pixel is kept
    (not cut out, valid op choice) and its sampling position (fy, fx)."""
    live = offs < total
    j = (offs % W).to(tl.int32)
    i = ((offs // W) % H).to(tl.int32)
    n = offs // (W * H)
    row = tl.load(idx_ptr + n, mask=live, other=0)
    pb = p_ptr + row * aug.NUM_PARAMS
    flip = tl.load(pb + aug.FLIP, mask=live, other=0) > 0.5
    if not DO_FLIP:  # the FLIP column is drawn for every strategy but used only with 'flip'
        flip = flip & False
    keep = live
    if CUTOUT:
        r0 = tl.load(pb + aug.CUT_X, mask=live, other=0).to(tl.int32) - CUT_H // 2
        c0 = tl.load(pb + aug.CUT_Y, mask=live, other=0).to(tl.int32) - CUT_W // 2
        keep = keep & ~((i >= r0) & (i < r0 + CUT_H) & (j >= c0) & (j < c0 + CUT_W))
    if NOPS == 0:
        fy = i.to(ACC)
        fx = j.to(ACC)
    else:
        fy, fx = _position(OP0, pb, live, i, j, H, W, ACC)
        if NOPS >= 2:
            op = tl.load(pb + aug.OP, mask=live, other=0).to(tl.int32)
            keep = keep & (op >= 0) & (op < NOPS)  # an out-of-range choice gives zeros, as the reference
            fy1, fx1 = _position(OP1, pb, live, i, j, H, W, ACC)
            fy = tl.where(op == 1, fy1, fy)
            fx = tl.where(op == 1, fx1, fx)
            if NOPS >= 3:
                fy2, fx2 = _position(OP2, pb, live, i, j, H, W, ACC)
                fy = tl.where(op == 2, fy2, fy)
                fx = tl.where(op == 2, fx2, fx)
    return n, pb, flip, keep, fy, fx


@triton.jit
def _tap(n, y, x, keep, flip, H, W, C: tl.constexpr):
    """Offset in x of tap (y, x) of the flipped image (channel 0) and whether it is in bounds."""
    ok = keep & (y >= 0) & (y < H) & (x >= 0) & (x < W)
    xs = tl.where(flip, W - 1 - x, x)
    return n * (C * H * W) + y * W + xs, ok


@triton.jit
def _channel_mean(x_ptr, off, ok, HW, C: tl.constexpr, ACC: tl.constexpr):
    s = tl.load(x_ptr + off, mask=ok, other=0).to(ACC)
    for c in tl.static_range(1, C):
        s += tl.load(x_ptr + off + c * HW, mask=ok, other=0).to(ACC)
    return s / C


@triton.jit
def _colour(v, bar, b, sat, con, mx):
    return con * ((v - bar) * sat + bar - mx) + mx + b


@triton.jit
def _diff_augment_fwd(x_ptr, p_ptr, idx_ptr, mean_ptr, out_ptr, total, H, W, CUT_H, CUT_W,
                      C: tl.constexpr, DO_FLIP: tl.constexpr, COLOR: tl.constexpr, CUTOUT: tl.constexpr, BILINEAR: tl.constexpr,
                      NOPS: tl.constexpr, OP0: tl.constexpr, OP1: tl.constexpr, OP2: tl.constexpr,
                      ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    n, pb, flip, keep, fy, fx = _setup(offs, total, p_ptr, idx_ptr, H, W, CUT_H, CUT_W,
                                       DO_FLIP, CUTOUT, NOPS, OP0, OP1, OP2, ACC)
    HW = H * W
    live = offs < total
    out_base = n * (C * HW) + (offs % HW)
    if BILINEAR:
        y0f = tl.floor(fy)
        x0f = tl.floor(fx)
        ay = fy - y0f
        ax = fx - x0f
        y0 = y0f.to(tl.int32)
        x0 = x0f.to(tl.int32)
    else:  # integer positions: one tap of weight 1
        y0 = fy.to(tl.int32)
        x0 = fx.to(tl.int32)
    o00, k00 = _tap(n, y0, x0, keep, flip, H, W, C)
    if BILINEAR:
        o01, k01 = _tap(n, y0, x0 + 1, keep, flip, H, W, C)
        o10, k10 = _tap(n, y0 + 1, x0, keep, flip, H, W, C)
        o11, k11 = _tap(n, y0 + 1, x0 + 1, keep, flip, H, W, C)
    if COLOR:
        b = tl.load(pb + aug.BRIGHT, mask=live, other=0).to(ACC)
        sat = tl.load(pb + aug.SAT, mask=live, other=0).to(ACC)
        con = tl.load(pb + aug.CONTRAST, mask=live, other=0).to(ACC)
        mx = tl.load(mean_ptr + n, mask=live, other=0).to(ACC)
        m00 = _channel_mean(x_ptr, o00, k00, HW, C, ACC)
        if BILINEAR:
            m01 = _channel_mean(x_ptr, o01, k01, HW, C, ACC)
            m10 = _channel_mean(x_ptr, o10, k10, HW, C, ACC)
            m11 = _channel_mean(x_ptr, o11, k11, HW, C, ACC)
    for c in tl.static_range(C):
        v = tl.load(x_ptr + o00 + c * HW, mask=k00, other=0).to(ACC)
        if COLOR:
            v = tl.where(k00, _colour(v, m00, b, sat, con, mx), 0)
        if BILINEAR:
            v01 = tl.load(x_ptr + o01 + c * HW, mask=k01, other=0).to(ACC)
            v10 = tl.load(x_ptr + o10 + c * HW, mask=k10, other=0).to(ACC)
            v11 = tl.load(x_ptr + o11 + c * HW, mask=k11, other=0).to(ACC)
            if COLOR:
                v01 = tl.where(k01, _colour(v01, m01, b, sat, con, mx), 0)
                v10 = tl.where(k10, _colour(v10, m10, b, sat, con, mx), 0)
                v11 = tl.where(k11, _colour(v11, m11, b, sat, con, mx), 0)
            v = (1 - ay) * ((1 - ax) * v + ax * v01) + ay * ((1 - ax) * v10 + ax * v11)
        tl.store(out_ptr + out_base + c * HW, v.to(out_ptr.dtype.element_ty), mask=live)


@triton.jit
def _diff_augment_scatter(g_ptr, p_ptr, idx_ptr, g2_ptr, total, H, W, CUT_H, CUT_W,
                          C: tl.constexpr, DO_FLIP: tl.constexpr, CUTOUT: tl.constexpr, BILINEAR: tl.constexpr,
                          NOPS: tl.constexpr, OP0: tl.constexpr, OP1: tl.constexpr, OP2: tl.constexpr,
                          ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Backward of cutout, op and flip: add each output gradient into its taps (at x positions)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    n, pb, flip, keep, fy, fx = _setup(offs, total, p_ptr, idx_ptr, H, W, CUT_H, CUT_W,
                                       DO_FLIP, CUTOUT, NOPS, OP0, OP1, OP2, ACC)
    HW = H * W
    g_base = n * (C * HW) + (offs % HW)
    if BILINEAR:
        y0f = tl.floor(fy)
        x0f = tl.floor(fx)
        ay = fy - y0f
        ax = fx - x0f
        y0 = y0f.to(tl.int32)
        x0 = x0f.to(tl.int32)
        o00, k00 = _tap(n, y0, x0, keep, flip, H, W, C)
        o01, k01 = _tap(n, y0, x0 + 1, keep, flip, H, W, C)
        o10, k10 = _tap(n, y0 + 1, x0, keep, flip, H, W, C)
        o11, k11 = _tap(n, y0 + 1, x0 + 1, keep, flip, H, W, C)
        for c in tl.static_range(C):
            g = tl.load(g_ptr + g_base + c * HW, mask=keep, other=0).to(ACC)
            tl.atomic_add(g2_ptr + o00 + c * HW, (1 - ay) * (1 - ax) * g, mask=k00)
            tl.atomic_add(g2_ptr + o01 + c * HW, (1 - ay) * ax * g, mask=k01)
            tl.atomic_add(g2_ptr + o10 + c * HW, ay * (1 - ax) * g, mask=k10)
            tl.atomic_add(g2_ptr + o11 + c * HW, ay * ax * g, mask=k11)
    else:
        # An integer shift (or identity) maps distinct outputs to distinct taps: plain stores.
        o00, k00 = _tap(n, fy.to(tl.int32), fx.to(tl.int32), keep, flip, H, W, C)
        for c in tl.static_range(C):
            g = tl.load(g_ptr + g_base + c * HW, mask=k00, other=0).to(ACC)
            tl.store(g2_ptr + o00 + c * HW, g, mask=k00)


@triton.jit
def _colour_bwd(g2_ptr, p_ptr, idx_ptr, gsum_ptr, gx_ptr, total, HW, C: tl.constexpr, ACC: tl.constexpr,
                BLOCK: tl.constexpr):
    """gx_c = con*sat*g_c + con*(1-sat)*mean_c(g) + (1-con)*sum(g[n])/(C*H*W), per pixel (n, q)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < total
    n = offs // HW
    base = n * (C * HW) + offs % HW
    pb = p_ptr + tl.load(idx_ptr + n, mask=live, other=0) * aug.NUM_PARAMS
    sat = tl.load(pb + aug.SAT, mask=live, other=0).to(ACC)
    con = tl.load(pb + aug.CONTRAST, mask=live, other=0).to(ACC)
    gmean = (1 - con) * tl.load(gsum_ptr + n, mask=live, other=0).to(ACC) / (C * HW)
    shared = con * (1 - sat) * _channel_mean(g2_ptr, base, live, HW, C, ACC) + gmean
    for c in tl.static_range(C):
        g = tl.load(g2_ptr + base + c * HW, mask=live, other=0).to(ACC)
        tl.store(gx_ptr + base + c * HW, (con * sat * g + shared).to(gx_ptr.dtype.element_ty), mask=live)


def _consts(flip, ops, cutout, acc_tl, c):
    nops = len(ops)
    padded = list(ops) + [aug.CROP] * (3 - nops)
    return dict(C=c, DO_FLIP=bool(flip), CUTOUT=bool(cutout), BILINEAR=any(o in (aug.SCALE, aug.ROTATE) for o in ops),
                NOPS=nops, OP0=padded[0], OP1=padded[1], OP2=padded[2], ACC=acc_tl, BLOCK=BLOCK)


def diff_augment_forward(x, params, index, mean, flip, color, cutout, ops, cut_h, cut_w):
    """x [N,C,H,W]; params [G, aug.NUM_PARAMS] (float32, float64 for double x); index [N] int64 rows;
    mean [N] per-sample mean of x (read only with color); ops: op codes (aug.CROP, aug.SCALE, aug.ROTATE)."""
    x = x.contiguous()
    n, c, h, w = x.shape
    acc_t, acc_tl = acc_types(x.dtype)
    out = torch.empty_like(x)
    total = n * h * w
    if total:
        k = _consts(flip, ops, cutout, acc_tl, c)
        _diff_augment_fwd[(triton.cdiv(total, BLOCK),)](
            x, params, index, mean if color else params, out, total, h, w, cut_h, cut_w, COLOR=bool(color), **k)
    return out


def diff_augment_backward(grad_out, params, index, flip, color, cutout, ops, cut_h, cut_w):
    grad_out = grad_out.contiguous()
    n, c, h, w = grad_out.shape
    acc_t, acc_tl = acc_types(grad_out.dtype)
    g2 = torch.zeros(n, c, h, w, dtype=acc_t, device=grad_out.device)
    total = n * h * w
    if total == 0:
        return g2.to(grad_out.dtype)
    k = _consts(flip, ops, cutout, acc_tl, c)
    grid = (triton.cdiv(total, BLOCK),)
    _diff_augment_scatter[grid](grad_out, params, index, g2, total, h, w, cut_h, cut_w, **k)
    if not color:
        return g2.to(grad_out.dtype)
    gsum = g2.sum(dim=(1, 2, 3))
    gx = torch.empty_like(grad_out)
    _colour_bwd[grid](g2, params, index, gsum, gx, total, h * w, C=c, ACC=acc_tl, BLOCK=BLOCK)
    return gx
