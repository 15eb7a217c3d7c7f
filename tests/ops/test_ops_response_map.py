"""udd_fast.ops.response_map on every live backend against response_map_ref,
window_scores_ref and usage_entropy_ref, on fresh random inputs: odd channel counts and maps (4x4,
3x5, 1x7; 1x1 to 5x5 with one or few channels), K up to 100 classes, tiles 16/14/11 with default
and odd region sizes, the proxy's maps at 64, 128 and 224 px (4x4, 4x4, 3x3) and ConvNet-3's there
(8x8, 16x16, 28x28) at tiles of factor 2 and 3, rows whose R is all negative or zero (UE 0),
non-contiguous inputs; forward only (with grad it runs the references)."""
import pytest
import torch

from helpers import OTHER_DTYPES, convnet_map, dtype_device, large_side_params, ops_device
from udd_fast import ops
from udd_fast.ops.response_map import response_map_ref, usage_entropy_ref, window_scores_ref
from udd_fast.region_search import window_grid

TOL = {torch.float32: 2e-5, torch.float64: 1e-10, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def cases(seed):
    """(feature map, head, labels, tile, windows): CIFAR-like 128x4x4 at tile 16, MNIST-like at tile
    14, odd maps and tile 11, K from 3 to 100."""
    g = torch.Generator().manual_seed(seed)
    return [map_case(g, *shape) for shape in ((6, 128, 4, 4, 10, 16, 0.5), (5, 37, 4, 4, 100, 14, 0.5),
                                              (7, 5, 3, 5, 3, 11, 0.5), (4, 3, 1, 7, 11, 11, 0.3))]


def map_case(g, n, ch, h, w, k, tile, region):
    fmap = torch.randn(n, ch, h, w, generator=g)
    head = torch.randn(k, ch * h * w, generator=g) / ch ** 0.5
    labels = torch.randint(0, k, (n,), generator=g)
    fmap[0] = 0.0  # R == 0: UE 0, all scores tie
    if n > 2:
        fmap[1] = -head[labels[1]].view(ch, h, w).sign()  # R < 0 everywhere: UE 0
    return fmap, head, labels, tile, window_grid(tile, region)


def side_cases(side):
    """At an image side of LARGE_SIDES: the proxy's map (ConvNet at its depth by resolution: 4x4 at
    64 and 128 px, 3x3 at 224) with K = 100 at factor 2's tile (side/2), and ConvNet-3's map there
    (side/8 square: 8x8, 16x16, 28x28, the widest) with K = 10 at factor 3's tile (ceil(side/3)) and
    an odd region size."""
    g = torch.Generator().manual_seed(side)
    return [map_case(g, 4, *convnet_map(side), 100, side // 2, 0.5),
            map_case(g, 3, *convnet_map(side, depth=3), 10, -(-side // 3), 0.3)]


def check(fmap, head, labels, tile, windows, dtype, device):
    tol = TOL[dtype]
    ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    f, W = fmap.to(device, dtype), head.to(device, dtype)
    R, scores, ue = ops.response_map(f, W, labels.to(device), tile, windows.to(device))
    R_ref = response_map_ref(f.to(ref_dtype), W.to(ref_dtype), labels.to(device))
    assert R.dtype == scores.dtype == ue.dtype == dtype
    assert R.shape == R_ref.shape and scores.shape == (fmap.shape[0], windows.shape[0]) and ue.shape == (fmap.shape[0],)
    scale = max(1.0, float(R_ref.abs().max()))
    torch.testing.assert_close(R.to(ref_dtype), R_ref, atol=tol * scale, rtol=tol)
    torch.testing.assert_close(scores.to(ref_dtype), window_scores_ref(R_ref, tile, windows.to(device)),
                               atol=tol * scale, rtol=tol)
    # UE from the backend's own R (half-precision R rounds; the entropy is checked, not the rounding).
    # A single cell divides by log(1): NaN in the reference, and so in every backend.
    one_cell = fmap.shape[2] * fmap.shape[3] == 1
    torch.testing.assert_close(ue.to(ref_dtype), usage_entropy_ref(R.to(ref_dtype)), atol=10 * tol, rtol=10 * tol,
                               equal_nan=one_cell)
    assert bool(ue.isnan().all()) if one_cell else float(ue[0]) == 0.0  # every case has a zero first row


@pytest.mark.parametrize("seed", [0, 1])
def test_response_map_matches_reference(ops_backend, seed):
    device = ops_device(ops_backend)
    for case in cases(seed):
        check(*case, torch.float32, device)


@pytest.mark.parametrize("ops_backend,side,dtype", large_side_params(), indirect=["ops_backend"])
def test_response_map_at_large_sides(ops_backend, side, dtype):
    device = dtype_device(ops_backend, dtype)
    for case in side_cases(side):
        check(*case, dtype, device)


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")  # 0 / log(1)
@pytest.mark.parametrize("h,w", [(1, 1), (1, 2), (2, 1), (2, 3), (5, 5)])
def test_response_map_small_and_odd_maps(ops_backend, h, w):
    """Maps down to one cell: an h*w of 1 reaches the Triton kernel as a constant (the JIT makes ints
    equal to 1 constants), which once failed to compile. One and three channels, 9 windows or one."""
    device = ops_device(ops_backend)
    g = torch.Generator().manual_seed(h * 10 + w)
    for ch, nw in ((1, 9), (3, 1)):
        n, k = 5, 4
        fmap = torch.randn(n, ch, h, w, generator=g)
        head = torch.randn(k, ch * h * w, generator=g)
        fmap[0] = 0.0
        check(fmap, head, torch.randint(0, k, (n,), generator=g), 11, window_grid(11, 0.5)[:nw], torch.float32, device)


@pytest.mark.parametrize("dtype", OTHER_DTYPES)
def test_response_map_other_dtypes(ops_backend, dtype):
    device = dtype_device(ops_backend, dtype)
    for case in cases(7)[1:3]:
        check(*case, dtype, device)


def test_response_map_planted_and_ties(ops_backend):
    """The response policy's argmin: a planted low window wins; exact ties go to the lowest index."""
    device = ops_device(ops_backend)
    windows = window_grid(16, 0.5).to(device)
    head = torch.ones(2, 16, device=device)
    for planted in range(9):
        cells = torch.ones(1, 1, 4, 4, device=device)
        py, px = planted // 3, planted % 3
        cells[0, 0, py:py + 2, px:px + 2] = -1.0
        _, scores, _ = ops.response_map(cells, head, torch.tensor([1], device=device), 16, windows)
        assert scores.argmin(1).tolist() == [planted]
    _, scores, ue = ops.response_map(torch.zeros(3, 1, 4, 4, device=device), head, torch.zeros(3, dtype=torch.long,
                                     device=device), 16, windows)
    assert scores.argmin(1).tolist() == [0, 0, 0] and ue.tolist() == [0.0, 0.0, 0.0]


def test_response_map_non_contiguous_and_empty(ops_backend):
    device = ops_device(ops_backend)
    g = torch.Generator().manual_seed(3)
    fmap = torch.randn(5, 4, 4, 9, generator=g).permute(0, 3, 1, 2)  # [5, 9, 4, 4], not contiguous
    head = torch.randn(16 * 9, 6, generator=g).t()  # [6, 144], not contiguous
    fmap[0] = 0.0
    assert not fmap.is_contiguous() and not head.is_contiguous()
    check(fmap, head, torch.randint(0, 6, (5,), generator=g), 16, window_grid(16, 0.5), torch.float32, device)
    R, scores, ue = ops.response_map(torch.zeros(0, 9, 4, 4, device=device), head.to(device),
                                     torch.zeros(0, dtype=torch.long, device=device), 16, window_grid(16, 0.5))
    assert R.shape == (0, 4, 4) and scores.shape == (0, 9) and ue.shape == (0,)


def test_response_map_with_grad_runs_the_reference(ops_backend):
    device = ops_device(ops_backend)
    fmap = torch.randn(3, 2, 4, 4, device=device, requires_grad=True)
    head = torch.randn(4, 32, device=device)
    R, _, _ = ops.response_map(fmap, head, torch.tensor([0, 3, 1], device=device), 16, window_grid(16, 0.5))
    R.sum().backward()
    assert torch.allclose(fmap.grad, head.view(4, 2, 4, 4)[[0, 3, 1]])


def test_response_map_rejects_bad_labels(ops_backend):
    if ops_device(ops_backend).type != "cpu" or ops_backend == "torch":
        pytest.skip("checked on the CPU kernels (the reference raises its own IndexError)")
    with pytest.raises(ValueError):
        ops.response_map(torch.rand(2, 1, 4, 4), torch.rand(3, 16), torch.tensor([0, 3]), 16, window_grid(16, 0.5))
