"""udd_fast.ops.crop_resize on every live backend against crop_resize_ref (forward and
backward), on fresh random inputs: odd sizes, formation boxes of factor 1-4, random boxes at the
borders and into the 0.5 padding, one-pixel boxes, non-contiguous inputs; at image sides of 64, 128
and 224 px the decode's formations (factor 2 and 3) and a region view; and crop_resize_ref (a gather
per tap, no host read) against its earlier form, which resized groups of equal box size with
F.interpolate."""
import pytest
import torch
import torch.nn.functional as F

from helpers import OTHER_DTYPES, dtype_device, large_side_params, ops_device
from udd_fast import ops
from udd_fast.decode import decode_plan, formation_boxes
from udd_fast.ops.crop_resize import crop_resize_ref
from udd_fast.region_search import window_grid

TOL = {torch.float32: 2e-5, torch.float64: 1e-10, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def random_boxes(g, n, h, w):
    """Boxes anywhere in the image and up to 3 pixels into the padding, 1 to h+3 pixels tall."""
    y0 = torch.randint(0, h + 1, (n,), generator=g)
    x0 = torch.randint(0, w + 1, (n,), generator=g)
    y1 = y0 + 1 + (torch.rand(n, generator=g) * (h + 3 - y0)).long()
    x1 = x0 + 1 + (torch.rand(n, generator=g) * (w + 3 - x0)).long()
    return torch.stack([y0, x0, y1, x1], 1)


def edge_boxes(h, w):
    """One-pixel boxes at the corners, whole image, whole image plus padding, boxes in the padding."""
    return torch.tensor([[0, 0, 1, 1], [h - 1, w - 1, h, w], [0, w - 1, 1, w], [h - 1, 0, h, 1],
                         [0, 0, h, w], [0, 0, h + 1, w + 2], [h, w, h + 1, w + 1], [h - 1, w - 2, h + 2, w + 1],
                         [h // 2, 0, h // 2 + 1, w]])


def cases(seed):
    """(images, src, boxes, out_size): formation plans of factor 1-4 on odd and even sizes, then
    random and edge boxes."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for size, factor in ((29, 1), (15, 2), (17, 3), (16, 4)):
        m = 2
        src, boxes = decode_plan(m, size, factor)
        out.append((torch.rand(m, 3, size, size, generator=g), src, boxes, (size, size)))
    h, w = 13, 10
    boxes = torch.cat([random_boxes(g, 12, h, w), edge_boxes(h, w)])
    src = torch.randint(0, 3, (boxes.shape[0],), generator=g)
    out.append((torch.rand(3, 1, h, w, generator=g), src, boxes, (11, 14)))
    out.append((torch.rand(3, 3, h, w, generator=g), src, boxes, (7, 5)))
    return out


def side_case(side):
    """(images, src, boxes, out_size) at an image side of LARGE_SIDES: two stored 3 x side x side
    images, resized to the side from a formation of factor 2 (the last tile), one of factor 3 (the
    last tile, ceil(side/3) pixels, which reaches into the padding) and a region view (the
    bottom-right window, half a tile, of the second factor-2 tile). Three outputs: the Triton
    interpreter takes seconds per output at 64 px."""
    g = torch.Generator().manual_seed(side)
    f2, f3 = formation_boxes(side, 2), formation_boxes(side, 3)
    view = window_grid(side // 2, 0.5)[8] + f2[1, :2].repeat(2)  # as RegionSearch.boxes places it
    boxes = torch.stack([f2[3], f3[8], view])
    return torch.rand(2, 3, side, side, generator=g), torch.tensor([1, 0, 1]), boxes, (side, side)


def _crop_resize_by_groups(images, src, boxes, out_size):
    """crop_resize_ref as it was before it gathered its taps: the samples of each box size cropped
    together and resized by F.interpolate (their grouping reads the device: unique, nonzero, int)."""
    oh, ow = out_size
    src, boxes = src.long(), boxes.long()
    n, (c, h, w) = src.shape[0], images.shape[1:]
    ph = max(0, int(boxes[:, 2].max()) - h)
    pw = max(0, int(boxes[:, 3].max()) - w)
    padded = F.pad(images, (0, pw, 0, ph), value=0.5) if ph or pw else images
    out = images.new_empty(n, c, oh, ow)
    sizes = boxes[:, 2:] - boxes[:, :2]
    for bh, bw in torch.unique(sizes, dim=0).tolist():
        sel = torch.nonzero((sizes[:, 0] == bh) & (sizes[:, 1] == bw)).flatten()
        rows = boxes[sel, 0:1] + torch.arange(bh, device=images.device)
        cols = boxes[sel, 1:2] + torch.arange(bw, device=images.device)
        crops = padded[src[sel].view(-1, 1, 1), :, rows.unsqueeze(2), cols.unsqueeze(1)]  # [m,bh,bw,C]
        out[sel] = F.interpolate(crops.permute(0, 3, 1, 2), size=(oh, ow), mode="bilinear", align_corners=False)
    return out


def check(images, src, boxes, out_size, dtype, device):
    tol = TOL[dtype]
    x = images.to(device, dtype).requires_grad_(True)
    out = ops.crop_resize(x, src.to(device), boxes.to(device), out_size)
    # The reference in float32 at least (half precision is compared with an upcast reference).
    ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    xr = images.to(device, ref_dtype).requires_grad_(True)
    ref = crop_resize_ref(xr, src.to(device), boxes.to(device), out_size)
    assert out.dtype == dtype and out.shape == ref.shape
    torch.testing.assert_close(out.to(ref_dtype), ref, atol=tol, rtol=tol)
    grad = torch.randn(ref.shape, dtype=ref_dtype, device=device)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    scale = max(1.0, float(xr.grad.abs().max()))
    torch.testing.assert_close(x.grad.to(ref_dtype), xr.grad, atol=4 * tol * scale, rtol=4 * tol)


@pytest.mark.parametrize("seed", [0, 1])
def test_crop_resize_matches_reference(ops_backend, seed):
    device = ops_device(ops_backend)
    for images, src, boxes, out_size in cases(seed):
        check(images, src, boxes, out_size, torch.float32, device)


@pytest.mark.parametrize("dtype", OTHER_DTYPES)
def test_crop_resize_other_dtypes(ops_backend, dtype):
    device = dtype_device(ops_backend, dtype)
    for images, src, boxes, out_size in cases(7)[-2:]:
        check(images, src, boxes, out_size, dtype, device)


@pytest.mark.parametrize("ops_backend,side,dtype", large_side_params(), indirect=["ops_backend"])
def test_crop_resize_at_large_sides(ops_backend, side, dtype):
    device = dtype_device(ops_backend, dtype)
    check(*side_case(side), dtype, device)


def test_crop_resize_non_contiguous(ops_backend):
    device = ops_device(ops_backend)
    g = torch.Generator().manual_seed(3)
    h, w = 11, 9
    images = torch.rand(3, w, h, 3, generator=g).permute(0, 3, 2, 1)  # [3, 3, h, w], not contiguous
    boxes = torch.cat([random_boxes(g, 8, h, w), edge_boxes(h, w)])
    boxes = torch.stack([boxes, boxes], 2).reshape(-1, 8)[:, ::2]  # strided view of the same boxes
    src = torch.randint(0, 3, (2 * boxes.shape[0],), generator=g, dtype=torch.int32)[::2]
    assert not images.is_contiguous() and not boxes.is_contiguous() and not src.is_contiguous()
    check(images, src, boxes, (8, 13), torch.float32, device)


def test_crop_resize_rejects_bad_boxes(ops_backend):
    if ops_device(ops_backend).type != "cpu":
        pytest.skip("on CUDA the check is an asynchronous device assert")
    images = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError):
        ops.crop_resize(images, torch.tensor([0]), torch.tensor([[2, 2, 2, 5]]), (4, 4))
    with pytest.raises(ValueError, match="every src an image index"):
        ops.crop_resize(images, torch.tensor([1]), torch.tensor([[2, 2, 4, 5]]), (4, 4))


def test_crop_resize_empty(ops_backend):
    device = ops_device(ops_backend)
    out = ops.crop_resize(torch.rand(2, 3, 8, 8, device=device), torch.zeros(0, dtype=torch.long, device=device),
                          torch.zeros(0, 4, dtype=torch.long, device=device), (8, 8))
    assert out.shape == (0, 3, 8, 8)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_reference_matches_its_grouped_form(seed, dtype):
    """crop_resize_ref against _crop_resize_by_groups (F.interpolate's own arithmetic), forward and the
    gradient w.r.t. the images, on the cases above (1 and 3 channels, box sizes mixed and shared, boxes
    into the padding, up- and downsizing): float64 to 1e-12, float32 to 1e-5."""
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    g = torch.Generator().manual_seed(100 + seed)
    for images, src, boxes, out_size in cases(seed):
        x = images.to(dtype).requires_grad_(True)
        y = images.to(dtype).requires_grad_(True)
        out = crop_resize_ref(x, src, boxes, out_size)
        exp = _crop_resize_by_groups(y, src, boxes, out_size)
        assert out.dtype == dtype and out.shape == exp.shape
        torch.testing.assert_close(out, exp, atol=tol, rtol=tol)
        grad = torch.randn(exp.shape, generator=g, dtype=dtype)
        out.backward(grad)
        exp.backward(grad)
        scale = max(1.0, float(y.grad.abs().max()))
        torch.testing.assert_close(x.grad, y.grad, atol=tol * scale, rtol=tol)


@pytest.mark.parametrize("channels", [1, 3])
def test_crop_resize_reference_gradcheck(channels):
    """float64 gradcheck of crop_resize_ref (full Jacobian): boxes inside, into the padding, one pixel,
    two of one size, resized up and down."""
    g = torch.Generator().manual_seed(5)
    images = torch.rand(2, channels, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    src = torch.tensor([0, 1, 1, 0, 1])
    boxes = torch.tensor([[0, 0, 3, 2], [1, 1, 6, 5], [4, 3, 5, 4], [0, 0, 5, 4], [2, 2, 5, 4]])
    for out_size in ((3, 6), (7, 2)):
        assert torch.autograd.gradcheck(lambda x: crop_resize_ref(x, src, boxes, out_size), (images,))


def test_crop_resize_cpp_gradcheck():
    live, why = ops.available_backends(reasons=True)["cpp"]
    if not live:
        pytest.skip(f"cpp not live: {why}")
    g = torch.Generator().manual_seed(6)
    images = torch.rand(2, 2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    src = torch.tensor([0, 1, 1, 0])
    boxes = torch.tensor([[0, 0, 3, 2], [1, 1, 6, 5], [4, 3, 5, 4], [0, 0, 5, 4]])
    with ops.use_backend("cpp"):
        assert torch.autograd.gradcheck(lambda x: ops.crop_resize(x, src, boxes, (3, 6)), (images,), fast_mode=True)
