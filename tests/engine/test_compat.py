"""udd_fast.compat: IDC-shaped decode, DiffAug, dist and matchloss.

Two kinds of checks: against reference formulas written from docs/method.md section 1 (always), and
against IDC's own functions on the same inputs and the same random draws (only when IDC's code is
present: env UDD_FAST_IDC_SRC, a checkout or its git dir; tests/idc_code.py loads it).
"""
import math
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from idc_code import idc_source, load_idc_functions, make_idc_synth, require_idc_src
from udd_fast import compat, ops
from udd_fast.models import ConvNet

BACKENDS = ["torch"] + (["cpp"] if ops.available_backends()["cpp"] else [])
TOL = dict(rtol=1e-5, atol=1e-5)


def _close(out, ref):
    """float32 against IDC's own functions: bilinear sampling weights and the colour statistics are
    computed in another order, so errors scale with the values' (or gradients') magnitude; measured on
    AMD EPYC: at most 1.5e-5 on a gradient of magnitude 5.3 (an Intel AVX-512 machine exceeded a flat
    1e-5 by 7e-7)."""
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(ref.abs().max())))


@pytest.fixture(params=BACKENDS)
def backend(request):
    with ops.use_backend(request.param):
        yield request.param


@pytest.fixture(scope="module")
def idc_src():
    return require_idc_src()


@pytest.fixture(scope="module")
def idc(idc_src):
    return load_idc_functions(idc_src)


def _seed(s):
    np.random.seed(s)
    torch.manual_seed(s)


def _fwd_bwd(fn, x, grad_seed=1):
    """fn(x) and d(sum(fn(x) * g))/dx for a fixed random g."""
    x = x.detach().clone().requires_grad_(True)
    with warnings.catch_warnings():  # IDC's code triggers torch's meshgrid/affine_grid default warnings
        warnings.simplefilter("ignore", UserWarning)
        y = fn(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed))
    y.backward(g)
    return y.detach(), x.grad


def _after():
    """The next draw of each global generator: equal iff both sides consumed the same draws."""
    return np.random.random(), torch.rand(1).item()


# -- decode -------------------------------------------------------------------------------------
def _decode_ref(img, target, factor):
    """Section 1: pad right/bottom with 0.5 to a multiple of k, k x k tiles of side ceil(H/k),
    bilinear upsample (align_corners=False), formation-major, labels repeated k^2 times."""
    h = img.shape[-1]
    pad = (-h) % factor
    img = F.pad(img, (0, pad, 0, pad), value=0.5)
    s = math.ceil(h / factor)
    tiles = [img[:, :, i * s:(i + 1) * s, j * s:(j + 1) * s] for i in range(factor) for j in range(factor)]
    data = F.interpolate(torch.cat(tiles), size=(h, h), mode="bilinear", align_corners=False)
    return data, torch.cat([target] * factor ** 2)


@pytest.mark.parametrize("size,channels", [(32, 3), (28, 1)])
@pytest.mark.parametrize("factor", [1, 2, 3])
def test_decode_matches_reference(backend, size, channels, factor):
    img = torch.rand(3, channels, size, size, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([4, 5, 6])
    out, grad = _fwd_bwd(lambda x: compat.decode_zoom(x, target, factor)[0], img)
    ref, ref_grad = _fwd_bwd(lambda x: _decode_ref(x, target, factor)[0], img)
    assert out.shape == (3 * factor ** 2, channels, size, size)
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)
    assert torch.equal(compat.decode_zoom(img, target, factor)[1], _decode_ref(img, target, factor)[1])
    data, lab = compat.decode(img, target, factor)
    torch.testing.assert_close(data, ref, **TOL)
    assert torch.equal(lab, _decode_ref(img, target, factor)[1])


def test_decode_edge_cases():
    img, target = torch.rand(2, 3, 32, 32), torch.tensor([0, 0])
    data, lab = compat.decode(img, target, 1)
    assert data is img and lab is target  # IDC's decode passes factor 1 through untouched
    with pytest.raises(ValueError, match="square"):
        compat.decode_zoom(torch.rand(2, 3, 32, 30), target, 2)


def test_subsample():
    data, target = torch.arange(10).float(), torch.arange(10)
    np.random.seed(3)
    d, t = compat.subsample(data, target, max_size=4)
    np.random.seed(3)
    assert torch.equal(t, target[np.random.permutation(10)[:4]]) and torch.equal(d, t.float())
    assert compat.subsample(data, target, max_size=-1)[0] is data


# -- dist and matchloss -------------------------------------------------------------------------
def _dist_ref(x, y, method):
    d = (x - y).reshape(x.shape[0], -1)
    if method == "mse":
        return (d ** 2).sum()
    if method == "l1":
        return d.abs().sum()
    if method == "l1_mean":
        return d.abs().mean(1).sum()
    xf, yf = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
    return (1 - (xf * yf).sum(1) / (xf.norm(dim=1) * yf.norm(dim=1) + 1e-6)).sum()


@pytest.mark.parametrize("method", ["mse", "l1", "l1_mean", "cos"])
def test_dist_formulas(method):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 3, 3, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    torch.testing.assert_close(compat.dist(x, y, method), _dist_ref(x, y, method))


def test_dist_unknown_method():
    with pytest.raises(ValueError, match="l2"):
        compat.dist(torch.zeros(2, 2), torch.zeros(2, 2), "l2")


def _match_case(seed=0):
    torch.manual_seed(seed)
    model = ConvNet(10, 3, 32, width=8)
    g = torch.Generator().manual_seed(seed)
    img_real = torch.randn(6, 3, 32, 32, generator=g)
    img_syn = torch.randn(4, 3, 32, 32, generator=g)
    lab_real = torch.randint(0, 10, (6,), generator=g)
    lab_syn = torch.randint(0, 10, (4,), generator=g)
    return model, img_real, img_syn, lab_real, lab_syn


def _loss_and_grad(fn, model, img_real, img_syn, lab_real, lab_syn):
    syn = img_syn.clone().requires_grad_(True)
    loss = fn(model, img_real, syn, lab_real, lab_syn)
    (grad,) = torch.autograd.grad(loss, syn)
    return loss.detach(), grad


@pytest.mark.parametrize("metric,bias,fc", [("mse", False, False), ("l1", False, False), ("mse", True, True)])
def test_matchloss_reference(metric, bias, fc):
    args = types.SimpleNamespace(match="grad", metric=metric, bias=bias, fc=fc)

    def ref(model, img_real, img_syn, lab_real, lab_syn):
        # Section 1: conv weights only (IDC's defaults); with bias and fc: every parameter.
        params = list(model.parameters()) if bias and fc else [c.weight for c in model.convs]
        g_real = torch.autograd.grad(F.cross_entropy(model(img_real), lab_real), params)
        g_syn = torch.autograd.grad(F.cross_entropy(model(img_syn), lab_syn), params, create_graph=True)
        return sum(_dist_ref(a.detach(), b, metric) for a, b in zip(g_real, g_syn))

    case = _match_case()
    loss, grad = _loss_and_grad(lambda *a: compat.matchloss(args, *a[1:], a[0]), *case)
    ref_loss, ref_grad = _loss_and_grad(ref, *case)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)
    assert grad.abs().sum() > 0


def test_matchloss_unsupported():
    model, img_real, img_syn, lab_real, lab_syn = _match_case()
    with pytest.raises(ValueError, match="feat"):
        compat.matchloss(types.SimpleNamespace(match="feat"), img_real, img_syn, lab_real, lab_syn, model)


# -- DiffAug, without IDC's code ----------------------------------------------------------------
def test_diffaug_batch_color_crop_cutout_formulas(backend):
    """Siamese draw from np.random in IDC's order: brightness, saturation, contrast, crop (tx, ty),
    cutout (x, y); then the section 1 formulas."""
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    np.random.seed(7)
    b, s, c = np.random.uniform(), np.random.uniform(), np.random.uniform()
    tx, ty = np.random.randint(-4, 5), np.random.randint(-4, 5)
    ox, oy = np.random.randint(0, 33), np.random.randint(0, 33)
    torch.manual_seed(7)
    torch_next = torch.rand(1).item()
    ref = x + (b - 0.5)
    m = ref.mean(1, keepdim=True)
    ref = (ref - m) * (2 * s) + m
    m = ref.mean((1, 2, 3), keepdim=True)
    ref = (ref - m) * (c + 0.5) + m
    ref = F.pad(ref, (4, 4, 4, 4))[:, :, 4 + tx:36 + tx, 4 + ty:36 + ty]  # shift with zero fill
    ref[:, :, max(ox - 8, 0):ox + 8, max(oy - 8, 0):oy + 8] = 0

    _seed(7)
    out = compat.DiffAug("color_crop_cutout", batch=True)(x)
    torch.testing.assert_close(out, ref, **TOL)
    assert torch.rand(1).item() == torch_next  # batch mode draws from numpy only


def test_diffaug_siamese_vs_per_sample(backend):
    x = torch.rand(1, 3, 32, 32).repeat(8, 1, 1, 1)
    _seed(0)
    out = compat.DiffAug("color_crop_cutout_flip_scale_rotate", batch=True)(x)
    assert all(torch.equal(out[0], o) for o in out[1:])
    out = compat.DiffAug("color_crop_cutout", batch=False)(x)
    assert not torch.allclose(out[0], out[1])


def test_diffaug_seed_and_grad(backend):
    x = torch.rand(4, 3, 32, 32)
    aug = compat.DiffAug("color_crop_cutout", batch=False)
    assert torch.equal(aug(x, seed=5), aug(x, seed=5))
    _, grad = _fwd_bwd(aug, x)
    assert grad.abs().sum() > 0
    assert compat.DiffAug("none")(x) is x


def test_diffaug_unsupported():
    with pytest.raises(ValueError, match="noise"):
        compat.DiffAug("color_noise")
    with pytest.raises(ValueError, match="ratio_cutout"):
        compat.DiffAug("color_cutout", ratio_cutout=0.25)
    compat.DiffAug("color_crop", ratio_cutout=0.25)  # no cutout: the ratio is unused


# -- against IDC's own functions ----------------------------------------------------------------
@pytest.mark.parametrize("size,channels", [(32, 3), (28, 1)])
@pytest.mark.parametrize("factor", [1, 2, 3])
def test_decode_zoom_matches_idc(idc, backend, size, channels, factor):
    img = torch.rand(4, channels, size, size, generator=torch.Generator().manual_seed(factor))
    target = torch.tensor([1, 1, 2, 2])
    synth = make_idc_synth((size, size))
    out, grad = _fwd_bwd(lambda x: compat.decode_zoom(x, target, factor)[0], img)
    ref, ref_grad = _fwd_bwd(lambda x: idc.decode_zoom(synth, x, target, factor)[0], img)
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)
    assert torch.equal(compat.decode_zoom(img, target, factor)[1], idc.decode_zoom(synth, img, target, factor)[1])


AUG_CASES = [  # strategy, batch, single, single_aug, seed
    ("color_crop_cutout", True, False, True, -1),
    ("color_crop_cutout", False, False, True, -1),
    ("color_crop", False, False, True, -1),
    ("color_crop", True, False, True, -1),
    ("color_crop_cutout_flip_scale_rotate", False, False, True, -1),
    ("color_crop_cutout_flip_scale_rotate", True, False, True, -1),
    ("color_crop_cutout_flip_scale_rotate", False, False, False, -1),  # every op, one after another
    ("color_crop_cutout_flip_scale_rotate", True, False, True, 5),  # reseeded before every function
    ("color_crop_cutout_flip_scale_rotate", False, True, True, -1),  # single: one part of all six
    ("flip_translate_color", False, False, True, 3),
]


@pytest.mark.parametrize("strategy,batch,single,single_aug,seed", AUG_CASES)
def test_diffaug_matches_idc(idc, backend, strategy, batch, single, single_aug, seed):
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for s in range(4):  # several draws, so the op choice takes different values
        _seed(s)
        ref, ref_grad = _fwd_bwd(lambda v: idc.DiffAug(strategy, batch=batch, single=single)(v, single_aug, seed), x)
        ref_next = _after()
        _seed(s)
        out, grad = _fwd_bwd(lambda v: compat.DiffAug(strategy, batch=batch, single=single)(v, single_aug, seed), x)
        assert _after() == ref_next, "the global generators were advanced differently"
        _close(out, ref)
        _close(grad, ref_grad)


def test_diffaug_matches_idc_28px(idc, backend):
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for batch in (True, False):
        _seed(2)
        ref = _fwd_bwd(idc.DiffAug("color_crop_cutout", batch=batch), x)
        _seed(2)
        out = _fwd_bwd(compat.DiffAug("color_crop_cutout", batch=batch), x)
        for a, b in zip(out, ref):
            _close(a, b)


@pytest.mark.parametrize("method", ["mse", "l1", "l1_mean", "cos"])
def test_dist_matches_idc(idc, method):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 3, 3, generator=g), torch.randn(8, 3, 3, 3, generator=g)
    torch.testing.assert_close(compat.dist(x, y, method), idc.dist(x, y, method))


@pytest.mark.parametrize("metric,bias,fc", [("mse", False, False), ("l1", False, False), ("l1_mean", True, False),
                                            ("cos", False, True), ("mse", True, True)])
def test_matchloss_matches_idc(idc, metric, bias, fc):
    args = types.SimpleNamespace(match="grad", metric=metric, bias=bias, fc=fc)
    case = _match_case(1)
    loss, grad = _loss_and_grad(lambda m, *a: compat.matchloss(args, *a, m), *case)
    ref_loss, ref_grad = _loss_and_grad(lambda m, *a: idc.matchloss(args, *a, m), *case)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)


def test_subsample_matches_idc(idc):
    data, target = torch.rand(40, 3, 4, 4), torch.arange(40)
    np.random.seed(4)
    d, t = compat.subsample(data, target, max_size=16)
    np.random.seed(4)
    rd, rt = idc.subsample(None, data, target, max_size=16)
    assert torch.equal(d, rd) and torch.equal(t, rt)


def test_load_idc_from_checkout(idc_src, tmp_path):
    """A work-tree checkout loads as well as a git dir (files written from the one found)."""
    for rel in ("misc/augment.py", "condense.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(idc_source(Path(idc_src), rel))
    ns = load_idc_functions(str(tmp_path))
    assert callable(ns.DiffAug) and callable(ns.matchloss) and callable(ns.decode_zoom)
    with pytest.raises(FileNotFoundError):
        load_idc_functions(str(tmp_path / "missing"))
