"""udd_fast.ops.region_mask on every live backend against region_mask_ref, on fresh random
inputs: the jitter policy's 9 windows at 32 px (tile 16), 28 px (tile 14) and an odd 15x15 image
(tile 8), and at 64, 128 and 224 px (factor 2's tiles, 32, 64 and 112), random masks on a 7x5
single-channel image, noise large enough that the clamp bites, per-channel and single-value
mean/std (also as [1,C,1,1] like the engine's), non-contiguous noise."""
import pytest
import torch

from helpers import OTHER_DTYPES, dtype_device, large_side_params, ops_device
from udd_fast import ops
from udd_fast.ops.region_mask import region_mask_ref
from udd_fast.region_search import window_grid, window_pixel_masks

TOL = {torch.float32: 1e-6, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def window_case(g, n, c, size, tile, d):
    """(x, masks, noise, mean, std): n images c x size x size, the 9 windows of a tile, d draws."""
    masks = window_pixel_masks(window_grid(tile, 0.5), tile, size)
    x = torch.rand(n, c, size, size, generator=g)
    noise = torch.randn(n, 9, d, c, size, size, generator=g) * 0.4
    mean, std = torch.rand(c, generator=g) * 0.5 + 0.25, torch.rand(c, generator=g) * 0.3 + 0.1
    return x, masks, noise, mean.view(1, c, 1, 1), std.view(1, c, 1, 1)


def cases(seed):
    g = torch.Generator().manual_seed(seed)
    out = [window_case(g, *shape) for shape in ((2, 3, 32, 16, 4), (3, 1, 28, 14, 2), (2, 3, 15, 8, 3))]
    x = torch.rand(3, 1, 7, 5, generator=g)
    masks = torch.rand(4, 7, 5, generator=g) > 0.5
    out.append((x, masks, torch.randn(3, 4, 1, 1, 7, 5, generator=g), torch.tensor([0.3]), torch.tensor([0.7])))
    return out


def check(x, masks, noise, mean, std, dtype, device):
    tol = TOL[dtype]
    ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    xd, nd = x.to(device, dtype), noise.to(device, dtype)
    out = ops.region_mask(xd, masks.to(device), nd, mean.to(device, dtype), std.to(device, dtype))
    ref = region_mask_ref(xd.to(ref_dtype), masks.to(device), nd.to(ref_dtype), mean.to(device, ref_dtype),
                          std.to(device, ref_dtype))
    assert out.dtype == dtype and out.shape == ref.shape == noise.shape
    scale = float(ref.abs().max())
    torch.testing.assert_close(out.to(ref_dtype), ref, atol=tol * scale, rtol=tol)


@pytest.mark.parametrize("seed", [0, 1])
def test_region_mask_matches_reference(ops_backend, seed):
    device = ops_device(ops_backend)
    for case in cases(seed):
        check(*case, torch.float32, device)


@pytest.mark.parametrize("ops_backend,side,dtype", large_side_params(), indirect=["ops_backend"])
def test_region_mask_at_large_sides(ops_backend, side, dtype):
    """Two RGB images of the side, the windows of factor 2's tile (ceil(side/2)), one draw."""
    device = dtype_device(ops_backend, dtype)
    check(*window_case(torch.Generator().manual_seed(side), 2, 3, side, -(-side // 2), 1), dtype, device)


@pytest.mark.parametrize("dtype", OTHER_DTYPES)
def test_region_mask_other_dtypes(ops_backend, dtype):
    device = dtype_device(ops_backend, dtype)
    for case in cases(7)[2:]:
        check(*case, dtype, device)


def test_region_mask_outside_the_window_is_the_normalized_input(ops_backend):
    device = ops_device(ops_backend)
    x = torch.rand(2, 3, 16, 16, device=device)
    masks = window_pixel_masks(window_grid(8, 0.5), 8, 16).to(device)
    noise = torch.randn(2, 9, 2, 3, 16, 16, device=device)
    mean, std = torch.tensor([0.4, 0.5, 0.6], device=device), torch.tensor([0.2, 0.25, 0.3], device=device)
    out = ops.region_mask(x, masks, noise, mean, std)
    plain = ((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)).view(2, 1, 1, 3, 16, 16).expand_as(out)
    outside = ~masks.view(1, 9, 1, 1, 16, 16).expand_as(out)
    assert torch.equal(out[outside], plain[outside])
    assert float(out.min()) >= float(((0 - mean) / std).min()) - 1e-6
    assert float(out.max()) <= float(((1 - mean) / std).max()) + 1e-6


def test_region_mask_non_contiguous_and_empty(ops_backend):
    device = ops_device(ops_backend)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 9, 11, 3, generator=g).permute(0, 3, 2, 1)  # [2, 3, 11, 9]
    noise = torch.randn(2, 9, 4, 3, 11, 9, generator=g)[:, :, ::2]  # draws 0 and 2
    masks = torch.rand(9, 11, 9, generator=g) > 0.3
    assert not x.is_contiguous() and not noise.is_contiguous()
    check(x, masks, noise, torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.3, 0.25]), torch.float32, device)
    out = ops.region_mask(x[:0].to(device), masks.to(device), noise[:0].to(device), torch.tensor([0.5], device=device),
                          torch.tensor([0.2], device=device))
    assert out.shape == (0, 9, 2, 3, 11, 9)
