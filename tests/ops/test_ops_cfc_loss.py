"""udd_fast.ops.cfc_loss on every live backend against cfc_loss_ref, value and gradient w.r.t.
the features, both reductions, on fresh random inputs: feature widths 2048 and odd ones, those of
the matching networks at 64, 128 and 224 px (ConvNet by resolution, ResNetAP-10, and ConvNet-3's up
to 100352), K up to 1000 classes (the kernels walk the classes in blocks), several temperatures, a
zero feature row (F.normalize's eps clamp), non-contiguous features; gradcheck of the reference (and
the C++ backend) in float64; second derivatives (through the reference, under create_graph); and
the engine's use: a gradient-matching term built with create_graph plus the CFC term,
differentiated once w.r.t. the input."""
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import OTHER_DTYPES, convnet_map, dtype_device, large_side_params, ops_device
from udd_fast import ops
from udd_fast.ops.cfc_loss import cfc_loss_ref, class_prototypes

TOL = {torch.float32: 2e-5, torch.float64: 1e-10, torch.float16: 5e-3, torch.bfloat16: 4e-2}


def cases(seed):
    """(features, labels, prototypes, tau): IDC's 2048-d features at K=10, K=100 with an odd width,
    a small odd case with a zero row."""
    g = torch.Generator().manual_seed(seed)
    out = [feature_case(g, *shape) for shape in ((12, 2048, 10, 0.1), (9, 301, 100, 0.07), (7, 37, 5, 1.0))]
    out[-1][0][2] = 0.0  # normalize(0) = 0: the eps clamp
    return out


def feature_case(g, n, d, k, tau):
    feats = torch.randn(n, d, generator=g) * 3
    protos = class_prototypes(torch.randn(k, 4, d, generator=g) + torch.randn(k, 1, d, generator=g))
    labels = torch.randint(0, k, (n,), generator=g)
    return feats, labels, protos, tau


def side_cases(side):
    """At an image side of LARGE_SIDES, the features the matching networks give: ConvNet at its depth
    by resolution (2048 wide at 64 and 128 px, 1152 at 224) at K = 10, ResNetAP-10 (IDC's ImageNet
    network, 512 wide at every side) at K = 100, and ConvNet-3 (128 * (side/8)**2: 8192, 32768,
    100352, the widest) at K = 10. Two rows each (the Triton interpreter takes seconds per row at
    8192, and at 2048 with Tiny-ImageNet's 200 classes: many classes are test_cfc_loss_many_classes'),
    none zero (a zero row's gradient, dz / eps, would set the scale of the comparison)."""
    g = torch.Generator().manual_seed(side)
    return [feature_case(g, 2, math.prod(convnet_map(side)), 10, 0.1), feature_case(g, 2, 512, 100, 0.07),
            feature_case(g, 2, math.prod(convnet_map(side, depth=3)), 10, 0.1)]


def check(feats, labels, protos, tau, dtype, device, reduction):
    tol = TOL[dtype]
    ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    f = feats.to(device, dtype).requires_grad_(True)
    fr = feats.to(device, dtype).to(ref_dtype).requires_grad_(True)
    y, mu = labels.to(device), protos.to(device, dtype)
    out = ops.cfc_loss(f, y, mu, tau, reduction)
    ref = cfc_loss_ref(fr, y, mu.to(ref_dtype), tau, reduction)
    assert out.dtype == dtype and out.shape == ref.shape
    scale = max(1.0, float(ref.detach().abs().max()))
    torch.testing.assert_close(out.detach().to(ref_dtype), ref.detach(), atol=tol * scale, rtol=tol)
    grad = torch.rand(ref.shape, dtype=ref_dtype, device=device) + 0.5
    out.backward(grad.to(dtype))
    ref.backward(grad)
    got, want = f.grad.to(ref_dtype), fr.grad
    # A zero feature row's gradient is dz / eps (F.normalize's clamp), about 1e11: beyond float16's
    # range (65504), so there it must come out infinite with the reference's sign, and the other rows
    # are compared as usual.
    big = want.abs() > torch.finfo(dtype).max
    assert bool(torch.isinf(got[big]).all() and (got[big].sign() == want[big].sign()).all())
    got, want = got[~big], want[~big]
    gscale = max(1e-3, float(want.abs().max()))
    torch.testing.assert_close(got, want, atol=4 * tol * gscale, rtol=4 * tol)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("seed", [0, 1])
def test_cfc_loss_matches_reference(ops_backend, seed, reduction):
    device = ops_device(ops_backend)
    for case in cases(seed):
        check(*case, torch.float32, device, reduction)


def test_cfc_loss_many_classes(ops_backend):
    """K = 1000 (ImageNet-1k): 63 blocks of classes and the running logsumexp across them; labels in
    the first, a middle and the last block, one twice. Once per backend (interpreted Triton takes
    seconds per call)."""
    device = ops_device(ops_backend)
    g = torch.Generator().manual_seed(11)
    n, d, k = 4, 77, 1000
    feats = torch.randn(n, d, generator=g) * 3
    protos = class_prototypes(torch.randn(k, 2, d, generator=g) + torch.randn(k, 1, d, generator=g))
    labels = torch.tensor([0, 999, 517, 999])
    check(feats, labels, protos, 0.1, torch.float32, device, "none")


@pytest.mark.parametrize("ops_backend,side,dtype", large_side_params(), indirect=["ops_backend"])
def test_cfc_loss_at_large_sides(ops_backend, side, dtype):
    device = dtype_device(ops_backend, dtype)
    for case in side_cases(side):
        check(*case, dtype, device, "mean")


@pytest.mark.parametrize("dtype", OTHER_DTYPES)
def test_cfc_loss_other_dtypes(ops_backend, dtype):
    device = dtype_device(ops_backend, dtype)
    for case in cases(7)[1:]:
        check(*case, dtype, device, "mean")


def test_cfc_loss_non_contiguous_features(ops_backend):
    device = ops_device(ops_backend)
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(64, 10, generator=g).t()  # [10, 64], not contiguous
    protos = F.normalize(torch.randn(6, 64, generator=g), dim=1)
    assert not feats.is_contiguous()
    check(feats, torch.randint(0, 6, (10,), generator=g), protos, 0.1, torch.float32, device, "none")


def test_cfc_loss_second_derivative_goes_through_the_reference(ops_backend):
    """The fused backward is first order; under create_graph the op's backward runs through the
    reference, so a second derivative is exact (the engine never takes one through the CFC term)."""
    device = ops_device(ops_backend)
    g = torch.Generator().manual_seed(2)
    f0 = torch.randn(4, 16, generator=g, dtype=torch.float64).to(device)
    mu = F.normalize(torch.randn(3, 16, generator=g, dtype=torch.float64), dim=1).to(device)
    y = torch.tensor([0, 1, 2, 0], device=device)
    out = []
    for cfc in (ops.cfc_loss, cfc_loss_ref):
        f = f0.clone().requires_grad_(True)
        (gf,) = torch.autograd.grad(cfc(f, y, mu, 0.1), f, create_graph=True)
        out.append(torch.autograd.grad((gf ** 2).sum(), f)[0])
    torch.testing.assert_close(out[0], out[1], atol=1e-10, rtol=1e-10)


def test_cfc_loss_as_the_engine_uses_it(ops_backend):
    """loss = matching distance of conv-weight gradients (create_graph) + lambda * CFC of the same
    features, differentiated once w.r.t. the input images: equal to the all-reference result."""
    device = ops_device(ops_backend)
    g = torch.Generator().manual_seed(9)
    x0 = torch.randn(6, 3, 5, 5, generator=g, dtype=torch.float64).to(device)
    conv = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    head = torch.randn(3, 36, generator=g, dtype=torch.float64).to(device)
    g_real = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64).to(device)
    y = torch.tensor([0, 1, 2, 0, 1, 2], device=device)
    mu = F.normalize(torch.randn(3, 36, generator=g, dtype=torch.float64), dim=1).to(device)

    def grad_of_images(cfc):
        x = x0.clone().requires_grad_(True)
        feats = F.relu(F.conv2d(x, conv)).flatten(1)  # [6, 36]
        (g_syn,) = torch.autograd.grad(F.cross_entropy(feats @ head.t(), y), conv, create_graph=True)
        loss = ((g_syn - g_real) ** 2).sum() + 0.5 * cfc(feats, y, mu, 0.1)
        return torch.autograd.grad(loss, x)[0]

    torch.testing.assert_close(grad_of_images(ops.cfc_loss), grad_of_images(cfc_loss_ref), atol=1e-10, rtol=1e-10)


def test_cfc_loss_prototypes_with_grad_run_the_reference(ops_backend):
    device = ops_device(ops_backend)
    mu = F.normalize(torch.randn(3, 8, device=device), dim=1).requires_grad_(True)
    ops.cfc_loss(torch.randn(5, 8, device=device), torch.tensor([0, 1, 2, 1, 0], device=device), mu, 0.1).backward()
    assert mu.grad is not None and bool(mu.grad.abs().sum() > 0)


def test_cfc_loss_rejects_bad_labels_and_reduction(ops_backend):
    with pytest.raises(ValueError, match="reduction"):
        ops.cfc_loss(torch.randn(2, 4), torch.tensor([0, 1]), torch.randn(2, 4), 0.1, reduction="sum")
    if ops_device(ops_backend).type != "cpu" or ops_backend == "torch":
        return
    with pytest.raises(ValueError):
        ops.cfc_loss(torch.randn(2, 4), torch.tensor([0, 2]), torch.randn(2, 4), 0.1)


def _cfc_inputs():
    g = torch.Generator().manual_seed(5)
    f = torch.randn(5, 9, generator=g, dtype=torch.float64, requires_grad=True)
    mu = F.normalize(torch.randn(4, 9, generator=g, dtype=torch.float64), dim=1)
    return f, torch.tensor([0, 3, 1, 1, 2]), mu


def test_cfc_loss_reference_gradcheck():
    f, y, mu = _cfc_inputs()
    assert torch.autograd.gradcheck(lambda t: cfc_loss_ref(t, y, mu, 0.1), (f,))
    assert torch.autograd.gradcheck(lambda t: cfc_loss_ref(t, y, mu, 0.5, "none"), (f,))


def test_cfc_loss_cpp_gradcheck():
    live, why = ops.available_backends(reasons=True)["cpp"]
    if not live:
        pytest.skip(f"cpp not live: {why}")
    f, y, mu = _cfc_inputs()
    with ops.use_backend("cpp"):
        assert torch.autograd.gradcheck(lambda t: ops.cfc_loss(t, y, mu, 0.1), (f,))
        assert torch.autograd.gradcheck(lambda t: ops.cfc_loss(t, y, mu, 0.5, "none"), (f,))
