"""Tests for udd_fast.augment (Strategy parsing, keyed parameter sampling) and diff_augment_ref
(ops/diff_augment.py) against an independent numpy implementation (explicit loops) of IDC's DiffAug
as the method text describes it: flip -> color (brightness, saturation, contrast) -> one op
(crop/scale/rotate) -> cutout.
"""
import math

import numpy as np
import pytest
import torch

from udd_fast import augment as A
from udd_fast import ops, rng
from udd_fast.augment import Strategy, sample_params
from udd_fast.ops.diff_augment import diff_augment_ref

COLS = dict(flip=A.FLIP, bright=A.BRIGHT, sat=A.SAT, contrast=A.CONTRAST, tx=A.TX, ty=A.TY, cut_x=A.CUT_X,
            cut_y=A.CUT_Y, scale_x=A.SCALE_X, scale_y=A.SCALE_Y, rot=A.ROT, op=A.OP)


def make_params(n, dtype=torch.float32, **cols):
    """Hand-built parameter rows: identity defaults (no flip, no colour change, no shift, scale 1,
    angle 0, op 0, cutout centred far outside... (cutout only applies when the strategy has it))."""
    p = torch.zeros(n, A.NUM_PARAMS, dtype=dtype)
    p[:, A.SAT] = 1.0
    p[:, A.CONTRAST] = 1.0
    p[:, A.SCALE_X] = 1.0
    p[:, A.SCALE_Y] = 1.0
    for name, v in cols.items():
        p[:, COLS[name]] = torch.as_tensor(v, dtype=dtype)
    return p


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _keys(seed, n):
    return rng.subkeys(rng.key(seed, "aug_test"), torch.arange(n))


# ----------------------------------------------------------------------------
# Independent numpy reference
# ----------------------------------------------------------------------------

def affine_ref(img, theta):
    """grid_sample(affine_grid(theta), bilinear, zeros padding, align_corners=False), explicit loops.
    img [C, H, W]; theta 2x3 maps output normalized (x=width, y=height) to input normalized."""
    c, h, w = img.shape
    out = np.zeros_like(img)
    for i in range(h):
        yn = (2 * i + 1) / h - 1
        for j in range(w):
            xn = (2 * j + 1) / w - 1
            xs = theta[0][0] * xn + theta[0][1] * yn + theta[0][2]
            ys = theta[1][0] * xn + theta[1][1] * yn + theta[1][2]
            px = ((xs + 1) * w - 1) / 2
            py = ((ys + 1) * h - 1) / 2
            x0, y0 = math.floor(px), math.floor(py)
            lx, ly = px - x0, py - y0
            acc = np.zeros(c)
            for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
                for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
                    if 0 <= yy < h and 0 <= xx < w:
                        acc += wy * wx * img[:, yy, xx]
            out[:, i, j] = acc
    return out


def translate_ref(img, tx, ty):
    """out[:, i, j] = img[:, i + tx, j + ty], zero outside (IDC's crop over a 1-pixel zero pad)."""
    c, h, w = img.shape
    out = np.zeros_like(img)
    for i in range(h):
        for j in range(w):
            si, sj = i + tx, j + ty
            if 0 <= si < h and 0 <= sj < w:
                out[:, i, j] = img[:, si, sj]
    return out


def cutout_ref(img, cx, cy):
    """Zero a square of side int(0.5*side+0.5), top-left = centre - side//2, clipped at the border."""
    c, h, w = img.shape
    csh, csw = int(0.5 * h + 0.5), int(0.5 * w + 0.5)
    r0, c0 = cx - csh // 2, cy - csw // 2
    out = img.copy()
    for i in range(h):
        for j in range(w):
            if r0 <= i < r0 + csh and c0 <= j < c0 + csw:
                out[:, i, j] = 0.0
    return out


def color_ref(img, b, s, con):
    img = img + b
    m = img.mean(axis=0, keepdims=True)  # per pixel, over channels
    img = (img - m) * s + m
    mm = img.mean()  # over C, H, W of this sample
    return (img - mm) * con + mm


def augment_ref(x, params, strategy):
    """The whole pipeline, one sample at a time. x numpy [N,C,H,W] float64, params numpy [N,12]."""
    out = np.zeros_like(x)
    for n in range(x.shape[0]):
        p = params[n]
        img = x[n].copy()
        if strategy.flip and p[A.FLIP] > 0.5:
            img = img[:, :, ::-1].copy()
        if strategy.color:
            img = color_ref(img, p[A.BRIGHT], p[A.SAT], p[A.CONTRAST])
        if strategy.ops:
            name = strategy.ops[int(p[A.OP])]
            if name == "crop":
                img = translate_ref(img, int(p[A.TX]), int(p[A.TY]))
            elif name == "scale":
                img = affine_ref(img, [[p[A.SCALE_X], 0, 0], [0, p[A.SCALE_Y], 0]])
            else:
                t = p[A.ROT]
                img = affine_ref(img, [[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0]])
        if strategy.cutout:
            img = cutout_ref(img, int(p[A.CUT_X]), int(p[A.CUT_Y]))
        out[n] = img
    return out


# ----------------------------------------------------------------------------
# Strategy
# ----------------------------------------------------------------------------

def test_strategy_parse():
    s = Strategy.parse("color_crop_cutout")
    assert (s.flip, s.color, s.cutout, s.ops) == (False, True, True, ("crop",))
    s = Strategy.parse("flip_color_crop_scale_rotate")
    assert (s.flip, s.color, s.cutout, s.ops) == (True, True, False, ("crop", "scale", "rotate"))
    s = Strategy.parse("color_crop_scale_rotate")
    assert s.ops == ("crop", "scale", "rotate") and s.color and not s.flip and not s.cutout
    s = Strategy.parse("Color_Crop")
    assert s.color and s.ops == ("crop",)
    assert Strategy.parse("none") == Strategy() == Strategy.parse("")
    assert Strategy.parse("cutout") == Strategy(cutout=True)
    assert str(Strategy.parse("color_crop_cutout")) == "color_crop_cutout"
    assert str(Strategy.parse("cutout_color_flip_crop")) == "flip_color_crop_cutout"
    assert str(Strategy()) == "none"


@pytest.mark.parametrize("bad", ["color_crap", "colour", "color__crop", "color_crop_cutout_mixup"])
def test_strategy_parse_unknown_raises(bad):
    with pytest.raises(ValueError):
        Strategy.parse(bad)


# ----------------------------------------------------------------------------
# sample_params
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("size,shift,cut,cut_hi", [(32, 4, 16, 32), (28, 4, 14, 28), (13, 2, 7, 12)])
def test_sample_params_ranges(size, shift, cut, cut_hi):
    assert A.crop_shift(size) == shift and A.cutout_size(size) == cut
    n = 20000
    strat = Strategy.parse("color_crop_scale_rotate_cutout")
    p = sample_params(_keys(size, n), strat, size).double()
    assert p.shape == (n, A.NUM_PARAMS) and sample_params(_keys(size, 2), strat, size).dtype == torch.float32
    col = lambda k: p[:, k]  # noqa: E731
    assert set(col(A.FLIP).tolist()) == {0.0, 1.0}
    assert abs(float(col(A.FLIP).mean()) - 0.5) < 5 * 0.5 / math.sqrt(n)
    b = col(A.BRIGHT)
    assert float(b.min()) >= -0.5 and float(b.max()) < 0.5
    assert abs(float(b.mean())) < 5 * math.sqrt(1 / 12 / n)
    s = col(A.SAT)
    assert float(s.min()) >= 0.0 and float(s.max()) < 2.0
    assert abs(float(s.mean()) - 1.0) < 5 * 2 * math.sqrt(1 / 12 / n)
    c = col(A.CONTRAST)
    assert float(c.min()) >= 0.5 and float(c.max()) < 1.5
    for k in (A.TX, A.TY):
        t = col(k)
        assert torch.equal(t, t.round()), "crop shifts are integers"
        assert set(t.long().tolist()) == set(range(-shift, shift + 1)), "all shifts in [-s, s] and only those"
        counts = torch.bincount(t.long() + shift).double()
        exp = n / (2 * shift + 1)
        assert float(((counts - exp) ** 2 / exp).sum()) < 2 * shift + 5 * math.sqrt(4 * shift)
    for k in (A.CUT_X, A.CUT_Y):
        t = col(k)
        assert torch.equal(t, t.round())
        assert set(t.long().tolist()) == set(range(0, cut_hi + 1)), "cutout centre uniform in [0, size]"
    for k in (A.SCALE_X, A.SCALE_Y):
        t = col(k)
        assert float(t.min()) >= 1 / 1.2 - 1e-6 and float(t.max()) <= 1.2 + 1e-6
        assert float(t.min()) < 1 / 1.2 + 0.01 and float(t.max()) > 1.2 - 0.01
    r = col(A.ROT)
    lim = 15 * math.pi / 180
    assert float(r.abs().max()) <= lim + 1e-6 and float(r.abs().max()) > lim - 0.01
    assert set(col(A.OP).long().tolist()) == {0, 1, 2}
    # the columns are not copies of one another (independent positions of the keyed stream)
    assert abs(float(torch.corrcoef(torch.stack([b, s, c]))[0, 1:].abs().max())) < 0.05


def test_sample_params_deterministic_and_keyed():
    strat = Strategy.parse("color_crop_cutout")
    k = _keys(1, 7)
    p1 = sample_params(k, strat, 32)
    p2 = sample_params(k.clone(), strat, 32)
    assert torch.equal(p1, p2)
    # row r depends only on key r
    for r in range(7):
        assert torch.equal(sample_params(k[r:r + 1], strat, 32)[0], p1[r])
    p3 = sample_params(_keys(2, 7), strat, 32)
    assert not torch.equal(p1[:, :A.OP], p3[:, :A.OP])
    assert len({tuple(row) for row in p1.tolist()}) == 7


def test_sample_params_op_key_shared_op():
    strat = Strategy.parse("crop_scale_rotate")
    keys = _keys(3, 300)
    ops_seen = set()
    for ok in range(12):
        p = sample_params(keys, strat, 32, op_key=rng.key(5, "op", ok))
        assert (p[:, A.OP] == p[0, A.OP]).all(), "op_key: one op for the whole batch"
        ops_seen.add(int(p[0, A.OP]))
    assert ops_seen <= {0, 1, 2} and len(ops_seen) > 1
    p = sample_params(keys, strat, 32)
    assert set(p[:, A.OP].long().tolist()) == {0, 1, 2}
    # single-op strategies always pick op 0
    assert (sample_params(keys, Strategy.parse("color_crop"), 32)[:, A.OP] == 0).all()


# ----------------------------------------------------------------------------
# diff_augment_ref: each part against the independent formulas
# ----------------------------------------------------------------------------

def test_color_math():
    g = _gen(10)
    x = torch.randn(5, 3, 9, 7, generator=g, dtype=torch.float64)
    params = make_params(5, dtype=torch.float64, bright=torch.rand(5, generator=g, dtype=torch.float64) - 0.5,
                         sat=2 * torch.rand(5, generator=g, dtype=torch.float64),
                         contrast=torch.rand(5, generator=g, dtype=torch.float64) + 0.5)
    out = diff_augment_ref(x, params, Strategy(color=True))
    xn, pn = x.numpy(), params.numpy()
    for n in range(5):
        b, s, c = pn[n, A.BRIGHT], pn[n, A.SAT], pn[n, A.CONTRAST]
        y = xn[n] + b
        y2 = np.empty_like(y)
        for i in range(9):
            for j in range(7):
                m = sum(y[ch, i, j] for ch in range(3)) / 3
                for ch in range(3):
                    y2[ch, i, j] = (y[ch, i, j] - m) * s + m
        mm = y2.sum() / y2.size
        y3 = (y2 - mm) * c + mm
        np.testing.assert_allclose(out[n].numpy(), y3, rtol=0, atol=1e-12)


def test_color_one_channel_saturation_is_noop():
    g = _gen(11)
    x = torch.randn(4, 1, 11, 11, generator=g, dtype=torch.float64)
    p = make_params(4, dtype=torch.float64, bright=[0.3, -0.2, 0.0, 0.45], sat=[0.0, 1.7, 0.3, 1.99],
                    contrast=[0.6, 1.4, 1.0, 0.5])
    out = diff_augment_ref(x, p, Strategy(color=True))
    for n in range(4):
        y = x[n].numpy() + p[n, A.BRIGHT].item()
        mm = y.mean()
        exp = (y - mm) * p[n, A.CONTRAST].item() + mm
        np.testing.assert_allclose(out[n].numpy(), exp, rtol=0, atol=1e-12)
    # with brightness only, the result is a pure shift
    p2 = make_params(4, dtype=torch.float64, bright=0.25, sat=0.0)
    np.testing.assert_allclose(diff_augment_ref(x, p2, Strategy(color=True)).numpy(), x.numpy() + 0.25, atol=1e-12)


def test_crop_is_translation_with_zero_fill():
    g = _gen(12)
    x = torch.randn(9, 2, 13, 11, generator=g, dtype=torch.float64)
    tx = [-4, -4, 0, 4, 3, -1, 0, 2, 13]
    ty = [-4, 4, 0, -3, 4, 1, 0, -2, 0]
    p = make_params(9, tx=tx, ty=ty)
    out = diff_augment_ref(x, p, Strategy.parse("crop"))
    for n in range(9):
        for i in range(13):
            for j in range(11):
                si, sj = i + tx[n], j + ty[n]
                exp = x[n, :, si, sj] if (0 <= si < 13 and 0 <= sj < 11) else torch.zeros(2, dtype=x.dtype)
                assert torch.equal(out[n, :, i, j], exp), (n, i, j)
    assert torch.equal(out[2], x[2]) and torch.equal(out[6], x[6])  # zero shift is the identity
    assert (out[8] == 0).all()  # shifted past the whole image


@pytest.mark.parametrize("size", [32, 28, 13])
def test_cutout_square_exactly(size):
    g = _gen(13 + size)
    cs = int(0.5 * size + 0.5)
    centres = [(0, 0), (size, size), (size // 2, size // 2), (0, size), (3, size - 2), (size - 1, 1), (cs // 2, 5)]
    n = len(centres)
    x = torch.randn(n, 2, size, size, generator=g, dtype=torch.float64)
    assert (x != 0).all()
    p = make_params(n, cut_x=[c[0] for c in centres], cut_y=[c[1] for c in centres])
    out = diff_augment_ref(x, p, Strategy(cutout=True))
    for k, (cx, cy) in enumerate(centres):
        r0, c0 = cx - cs // 2, cy - cs // 2
        zeroed = 0
        for i in range(size):
            for j in range(size):
                if r0 <= i < r0 + cs and c0 <= j < c0 + cs:
                    assert (out[k, :, i, j] == 0).all(), (k, i, j)
                    zeroed += 1
                else:
                    assert torch.equal(out[k, :, i, j], x[k, :, i, j]), (k, i, j)
        exp_rows = min(r0 + cs, size) - max(r0, 0)
        exp_cols = min(c0 + cs, size) - max(c0, 0)
        assert zeroed == exp_rows * exp_cols
    # the interior centre zeroes a full square of side cs
    k = 2
    assert int((out[k, 0] == 0).sum()) == cs * cs


def test_flip():
    g = _gen(14)
    x = torch.randn(4, 3, 7, 9, generator=g, dtype=torch.float64)
    p = make_params(4, flip=[1.0, 0.0, 1.0, 0.0])
    out = diff_augment_ref(x, p, Strategy(flip=True))
    for n in range(4):
        for j in range(9):
            src = 8 - j if p[n, A.FLIP] > 0.5 else j
            assert torch.equal(out[n, :, :, j], x[n, :, :, src])
    # flip column ignored when the strategy has no flip
    assert torch.equal(diff_augment_ref(x, p, Strategy()), x)


@pytest.mark.parametrize("text", ["color_crop_cutout", "flip_color_crop_cutout", "color_crop", "color_scale_rotate",
                                  "crop_scale_rotate_cutout", "flip_color_crop_scale_rotate"])
def test_full_pipeline_matches_reference_per_sample(text):
    strat = Strategy.parse(text)
    g = _gen(15)
    n, c, size = 6, 3, 11
    x = torch.randn(n, c, size, size, generator=g, dtype=torch.float64)
    p = sample_params(_keys(len(text), n), strat, size)
    if len(strat.ops) > 1:
        p[:, A.OP] = torch.tensor([0, 1, 2, 2, 1, 0], dtype=p.dtype) % len(strat.ops)  # every op, per sample
    out = diff_augment_ref(x, p, strat)
    exp = augment_ref(x.numpy(), p.double().numpy(), strat)
    np.testing.assert_allclose(out.numpy(), exp, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ops.diff_augment(x, p, strat).numpy(), exp, rtol=0, atol=1e-10)


def test_siamese_index_shares_one_draw():
    strat = Strategy.parse("color_crop_cutout")
    g = _gen(16)
    n, size = 5, 12
    x = torch.randn(n, 3, size, size, generator=g, dtype=torch.float64)
    p = sample_params(_keys(7, 3), strat, size)
    p[0, A.TX], p[0, A.TY] = 2, -3  # a visible shift
    index = torch.zeros(n, dtype=torch.long)
    out = diff_augment_ref(x, p, strat, index)
    for k in range(n):
        single = diff_augment_ref(x[k:k + 1], p[0:1], strat)
        assert torch.equal(out[k:k + 1], single)
    exp = augment_ref(x.numpy(), p[[0] * n].double().numpy(), strat)
    np.testing.assert_allclose(out.numpy(), exp, atol=1e-10)
    # the shared crop shift: every sample zero-filled in the same rows/columns (bottom 2 rows, left 3 cols)
    assert (out[:, :, size - 2:, :] == 0).all() and (out[:, :, :, :3] == 0).all()
    # groups: index picks the row of each sample
    index = torch.tensor([2, 0, 1, 2, 0])
    out = diff_augment_ref(x, p, strat, index)
    exp = augment_ref(x.numpy(), p[index].double().numpy(), strat)
    np.testing.assert_allclose(out.numpy(), exp, atol=1e-10)


def test_per_sample_rows_differ():
    strat = Strategy.parse("color_crop_cutout")
    g = _gen(17)
    n, size = 6, 16
    x = torch.randn(1, 3, size, size, generator=g, dtype=torch.float64).expand(n, -1, -1, -1).contiguous()
    p = sample_params(_keys(8, n), strat, size)
    out = diff_augment_ref(x, p, strat)
    for a in range(n):
        for b in range(a + 1, n):
            assert not torch.equal(out[a], out[b]), "different rows must give different outputs"
        assert torch.equal(out[a:a + 1], diff_augment_ref(x[a:a + 1], p[a:a + 1], strat))


def test_wrong_param_count_fails():
    x = torch.zeros(3, 1, 8, 8)
    with pytest.raises(AssertionError):
        diff_augment_ref(x, make_params(2), Strategy(color=True))


def test_scale_rotate_identity_params():
    g = _gen(18)
    x = torch.randn(4, 3, 13, 9, generator=g, dtype=torch.float64)
    p = make_params(4, scale_x=1.0, scale_y=1.0, rot=0.0, op=[0, 1, 0, 1])
    for text in ("scale", "rotate", "scale_rotate"):
        out = diff_augment_ref(x, p, Strategy.parse(text))
        torch.testing.assert_close(out, x, rtol=0, atol=1e-12)
    out = diff_augment_ref(x.float(), p, Strategy.parse("scale_rotate"))
    torch.testing.assert_close(out, x.float(), rtol=0, atol=1e-5)


def test_scale_and_rotate_against_affine_reference():
    g = _gen(19)
    x = torch.randn(4, 2, 11, 13, generator=g, dtype=torch.float64)
    p = make_params(4, dtype=torch.float64, scale_x=[1.2, 0.85, 1.0, 1.1], scale_y=[0.9, 1.15, 1.2, 1 / 1.2],
                    rot=[0.2, -0.26, 0.05, math.pi / 2])
    xn, pn = x.numpy(), p.numpy()
    out_s = diff_augment_ref(x, p, Strategy.parse("scale"))
    out_r = diff_augment_ref(x, p, Strategy.parse("rotate"))
    for n in range(4):
        np.testing.assert_allclose(out_s[n].numpy(), affine_ref(xn[n], [[pn[n, A.SCALE_X], 0, 0],
                                                                       [0, pn[n, A.SCALE_Y], 0]]), atol=1e-12)
        t = pn[n, A.ROT]
        np.testing.assert_allclose(out_r[n].numpy(), affine_ref(xn[n], [[math.cos(t), -math.sin(t), 0],
                                                                       [math.sin(t), math.cos(t), 0]]), atol=1e-12)
    # a quarter turn of a square image is an exact pixel rotation: out[i, j] = x[j, S-1-i]... check the
    # direction independently: rotation by +90 deg maps output (xn, yn) to input (-yn, xn)
    xs = torch.randn(1, 1, 7, 7, generator=g, dtype=torch.float64)
    out = diff_augment_ref(xs, make_params(1, dtype=torch.float64, rot=math.pi / 2), Strategy.parse("rotate"))
    for i in range(7):
        for j in range(7):
            # input x-coordinate = -yn -> column 6 - i; input y-coordinate = xn -> row j
            assert abs(float(out[0, 0, i, j] - xs[0, 0, j, 6 - i])) < 1e-12


def test_gradcheck_color_crop_cutout():
    strat = Strategy.parse("flip_color_crop_cutout")
    g = _gen(20)
    x = torch.randn(3, 2, 7, 7, generator=g, dtype=torch.float64, requires_grad=True)
    p = sample_params(_keys(9, 2), strat, 7)
    p[:, A.TX] = torch.tensor([1.0, -1.0])
    index = torch.tensor([0, 1, 1])
    assert torch.autograd.gradcheck(lambda v: diff_augment_ref(v, p, strat, index), (x,))


def test_gradcheck_scale_rotate():
    strat = Strategy.parse("color_scale_rotate")
    g = _gen(21)
    x = torch.randn(3, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    p = sample_params(_keys(10, 3), strat, 7)
    p[:, A.OP] = torch.tensor([0.0, 1.0, 1.0])
    assert torch.autograd.gradcheck(lambda v: diff_augment_ref(v, p, strat), (x,))
