"""udd_fast.ops.diff_augment on every live backend against diff_augment_ref (forward and
backward): every strategy the project uses, siamese (index) and per-sample, 1 and 3 channels,
sizes 28, 32 and 29, and 64, 128 and 224 (crop shifts and cutouts of those sides, each op forced),
parameters from sample_params with random keys."""
import pytest
import torch

from helpers import OTHER_DTYPES, dtype_device, large_side_params, ops_device
from udd_fast import ops
from udd_fast.augment import CROP, NUM_PARAMS, OP, ROTATE, SCALE, Strategy, sample_params
from udd_fast.ops.diff_augment import diff_augment_ref

STRATEGIES = ("color_crop_cutout", "color_crop", "color_crop_cutout_flip_scale_rotate", "color_crop_scale_rotate",
              "color_crop_cutout_scale_rotate", "none")
TOL = {torch.float32: 2e-5, torch.float64: 1e-10, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def draw(g, strategy, n, c, size, siamese, op_key=False):
    """x [n, c, size, size] (normalized-like), params and index (None in per-sample mode)."""
    x = torch.randn(n, c, size, size, generator=g)
    groups = 2 if siamese else n
    keys = torch.randint(0, 2 ** 62, (groups,), generator=g)
    key = int(torch.randint(0, 2 ** 62, (1,), generator=g)) if op_key else None
    params = sample_params(keys, strategy, size, op_key=key)
    index = torch.randint(0, groups, (n,), generator=g) if siamese else None
    return x, params, index


def check(x, params, strategy, index, dtype, device):
    tol = TOL[dtype]
    index = None if index is None else index.to(device)
    xa = x.to(device, dtype).requires_grad_(True)
    out = ops.diff_augment(xa, params.to(device), strategy, index)
    ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    xr = x.to(device, ref_dtype).requires_grad_(True)
    ref = diff_augment_ref(xr, params.to(device), strategy, index)
    assert out.dtype == dtype and out.shape == ref.shape
    scale = max(1.0, float(ref.detach().abs().max()))
    torch.testing.assert_close(out.to(ref_dtype), ref, atol=tol * scale, rtol=tol)
    grad = torch.randn(ref.shape, dtype=ref_dtype, device=device)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    scale = max(1.0, float(xr.grad.abs().max()))
    torch.testing.assert_close(xa.grad.to(ref_dtype), xr.grad, atol=2 * tol * scale, rtol=2 * tol)


def grid(backend):
    """(strategy, siamese, channels, size): everything on the compiled backends; the Triton
    interpreter gets every strategy x mode x channels at one size and the other sizes once each."""
    full = [(s, m, c, z) for s in STRATEGIES for m in (True, False) for c in (1, 3) for z in (28, 32, 29)]
    if backend != "triton" or torch.cuda.is_available():
        return full
    return [t for t in full if t[3] == 29] + [(STRATEGIES[0], True, 3, 28), (STRATEGIES[2], False, 1, 32)]


def side_cases(backend, side):
    """(x, params, strategy, index) at an image side of LARGE_SIDES: the matching strategy on a
    siamese batch, and the full strategy per sample with its op forced to crop, scale and rotate in
    turn; the Triton interpreter (tens of ms per 128 pixels with every op) gets the full strategy
    alone on one channel, crop and rotate."""
    g = torch.Generator().manual_seed(side)
    full = Strategy.parse("color_crop_cutout_flip_scale_rotate")
    if backend == "triton" and not torch.cuda.is_available():
        x, params, index = draw(g, full, 2, 1, side, siamese=False)
        params[:, OP] = torch.tensor([float(CROP), float(ROTATE)])
        return [(x, params, full, index)]
    matching = Strategy.parse("color_crop_cutout")
    xm, pm, im = draw(g, matching, 4, 3, side, siamese=True)
    x, params, index = draw(g, full, 3, 3, side, siamese=False)
    params[:, OP] = torch.tensor([float(CROP), float(SCALE), float(ROTATE)])
    return [(xm, pm, matching, im), (x, params, full, index)]


@pytest.mark.parametrize("seed", [0])
def test_diff_augment_matches_reference(ops_backend, seed):
    device = ops_device(ops_backend)
    g = torch.Generator().manual_seed(seed)
    small = ops_backend == "triton" and device.type == "cpu"
    for name, siamese, c, size in grid(ops_backend):
        strategy = Strategy.parse(name)
        x, params, index = draw(g, strategy, 3 if small else 6, c, size, siamese)
        check(x, params, strategy, index, torch.float32, device)


@pytest.mark.parametrize("ops_backend,side,dtype", large_side_params(), indirect=["ops_backend"])
def test_diff_augment_at_large_sides(ops_backend, side, dtype):
    device = dtype_device(ops_backend, dtype)
    for x, params, strategy, index in side_cases(ops_backend, side):
        check(x, params, strategy, index, dtype, device)


def test_diff_augment_per_sample_with_op_key(ops_backend):
    """The network-update form: per-sample draws, one op choice per batch (op_key)."""
    device = ops_device(ops_backend)
    g = torch.Generator().manual_seed(11)
    for name in ("color_crop", "color_crop_scale_rotate", "color_crop_cutout_flip_scale_rotate"):
        strategy = Strategy.parse(name)
        x, params, index = draw(g, strategy, 4, 3, 29, siamese=False, op_key=True)
        check(x, params, strategy, index, torch.float32, device)


def test_diff_augment_every_op_and_out_of_range_choice(ops_backend):
    """Force each op of a three-op strategy, plus an out-of-range choice (zeros, as the reference)."""
    device = ops_device(ops_backend)
    g = torch.Generator().manual_seed(12)
    strategy = Strategy.parse("color_crop_cutout_flip_scale_rotate")
    x, params, _ = draw(g, strategy, 5, 3, 17, siamese=False)
    params[:, OP] = torch.tensor([0.0, 1.0, 2.0, 3.0, 1.0])
    check(x, params, strategy, None, torch.float32, device)


@pytest.mark.parametrize("dtype", OTHER_DTYPES)
def test_diff_augment_other_dtypes(ops_backend, dtype):
    device = dtype_device(ops_backend, dtype)
    g = torch.Generator().manual_seed(13)
    for name in ("color_crop_cutout", "color_crop_cutout_flip_scale_rotate"):
        strategy = Strategy.parse(name)
        x, params, index = draw(g, strategy, 4, 3, 29, siamese=True)
        check(x, params, strategy, index, dtype, device)


def test_diff_augment_non_contiguous(ops_backend):
    device = ops_device(ops_backend)
    g = torch.Generator().manual_seed(14)
    strategy = Strategy.parse("color_crop_cutout_flip_scale_rotate")
    x = torch.randn(4, 29, 29, 3, generator=g).permute(0, 3, 1, 2)  # channels-last view
    params = sample_params(torch.randint(0, 2 ** 62, (6,), generator=g), strategy, 29)
    params = torch.cat([params, params], 1)[:, :NUM_PARAMS]  # a non-contiguous slice
    index = torch.tensor([0, 5, 0, 2, 3, 5, 1, 1])[::2]
    assert not x.is_contiguous() and not params.is_contiguous() and not index.is_contiguous()
    check(x, params, strategy, index, torch.float32, device)


def test_diff_augment_accepts_strategy_text(ops_backend):
    device = ops_device(ops_backend)
    g = torch.Generator().manual_seed(15)
    strategy = Strategy.parse("color_crop_cutout")
    x, params, index = draw(g, strategy, 2, 3, 16, siamese=True)
    x, params, index = x.to(device), params.to(device), index.to(device)
    torch.testing.assert_close(ops.diff_augment(x, params, "color_crop_cutout", index),
                               diff_augment_ref(x, params, strategy, index), atol=1e-5, rtol=1e-5)


def _gradcheck(fn, x):
    return torch.autograd.gradcheck(fn, (x,), fast_mode=True)


@pytest.mark.parametrize("name", ["color_crop_cutout", "color_crop_cutout_flip_scale_rotate"])
def test_diff_augment_reference_gradcheck(name):
    g = torch.Generator().manual_seed(16)
    strategy = Strategy.parse(name)
    x, params, index = draw(g, strategy, 3, 3, 9, siamese=True)
    x = x.double().requires_grad_(True)
    assert _gradcheck(lambda t: diff_augment_ref(t, params, strategy, index), x)


@pytest.mark.parametrize("name", ["color_crop_cutout", "color_crop_cutout_flip_scale_rotate"])
def test_diff_augment_cpp_gradcheck(name):
    live, why = ops.available_backends(reasons=True)["cpp"]
    if not live:
        pytest.skip(f"cpp not live: {why}")
    g = torch.Generator().manual_seed(17)
    strategy = Strategy.parse(name)
    x, params, index = draw(g, strategy, 3, 3, 9, siamese=True)
    x = x.double().requires_grad_(True)
    with ops.use_backend("cpp"):
        assert _gradcheck(lambda t: ops.diff_augment(t, params, strategy, index), x)


def test_diff_augment_is_first_order_only():
    """Backward is first-order (these act on inputs); asking for a second order raises, never
    silently returns zeros."""
    live, why = ops.available_backends(reasons=True)["cpp"]
    if not live:
        pytest.skip(f"cpp not live: {why}")
    g = torch.Generator().manual_seed(18)
    strategy = Strategy.parse("color_crop")
    x, params, _ = draw(g, strategy, 2, 3, 8, siamese=False)
    x.requires_grad_(True)
    with ops.use_backend("cpp"):
        out = ops.diff_augment(x, params, strategy)
        (gx,) = torch.autograd.grad((out ** 2).sum(), x, create_graph=True)
        with pytest.raises(RuntimeError):
            gx.sum().backward()
