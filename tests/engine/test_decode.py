"""Tests for udd_fast.decode (formation_boxes, decode_plan, mix_init) and crop_resize_ref (ops/crop_resize.py).

Every expected value comes from an independent float64 numpy implementation with explicit loops
over output pixels, written from the method text (section 1 and 3), never from the code under test.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from udd_fast import ops
from udd_fast.decode import decode_plan, formation_boxes, mix_init
from udd_fast.ops.crop_resize import crop_resize_ref


# ----------------------------------------------------------------------------
# Independent references
# ----------------------------------------------------------------------------

def _axis_weights(i, in_len, out_len):
    """Bilinear source positions for output index i (align_corners=False)."""
    y = (i + 0.5) * in_len / out_len - 0.5
    y = max(y, 0.0)
    y0 = int(math.floor(y))
    y1 = min(y0 + 1, in_len - 1)
    ly = y - y0
    return y0, y1, 1.0 - ly, ly


def bilinear_ref(img, oh, ow):
    """img [C, h, w] numpy float64 -> [C, oh, ow] by explicit loops."""
    c, h, w = img.shape
    out = np.zeros((c, oh, ow))
    for i in range(oh):
        y0, y1, wy0, wy1 = _axis_weights(i, h, oh)
        for j in range(ow):
            x0, x1, wx0, wx1 = _axis_weights(j, w, ow)
            out[:, i, j] = (wy0 * (wx0 * img[:, y0, x0] + wx1 * img[:, y0, x1])
                            + wy1 * (wx0 * img[:, y1, x0] + wx1 * img[:, y1, x1]))
    return out


def crop_resize_np(images, src, boxes, out_size):
    """Pad right/bottom with 0.5 (as far as the box needs), crop the box, resize bilinearly."""
    images = np.asarray(images, dtype=np.float64)
    _, c, h, w = images.shape
    oh, ow = out_size
    out = np.zeros((len(src), c, oh, ow))
    for n, (s, (y0, x0, y1, x1)) in enumerate(zip(src, boxes)):
        ph, pw = max(h, y1), max(w, x1)
        padded = np.full((c, ph, pw), 0.5)
        padded[:, :h, :w] = images[s]
        out[n] = bilinear_ref(padded[:, y0:y1, x0:x1], oh, ow)
    return out


def nearest_ref(img, oh, ow):
    """Legacy nearest: src index floor(dst * in / out), computed in exact integers."""
    c, h, w = img.shape
    out = np.zeros((c, oh, ow), dtype=img.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = img[:, (i * h) // oh, (j * w) // ow]
    return out


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _run(images, src, boxes, out_size):
    out = crop_resize_ref(images, torch.as_tensor(src), torch.as_tensor(boxes), out_size)
    exp = crop_resize_np(images.detach().double().numpy(), list(src), [tuple(b) for b in boxes], out_size)
    return out, exp


# ----------------------------------------------------------------------------
# crop_resize_ref
# ----------------------------------------------------------------------------

def test_crop_resize_random_boxes_odd_sizes():
    g = _gen(0)
    images = torch.randn(4, 3, 13, 11, generator=g, dtype=torch.float64)
    boxes = [(0, 0, 13, 11),      # whole image
             (2, 3, 9, 8),        # interior, 7 x 5
             (0, 0, 7, 5),        # top-left border, 7 x 5 too (resized in one call)
             (8, 4, 13, 11),      # bottom-right border, inside
             (6, 6, 7, 7),        # one pixel
             (4, 2, 5, 9),        # one row
             (1, 10, 12, 11),     # one column at the right border
             (10, 9, 16, 14),     # past the image into the 0.5 padding (bottom and right)
             (0, 5, 13, 12),      # one padded column
             (3, 3, 10, 10)]      # 7 x 7, shares its size with no other box
    src = [0, 1, 2, 3, 0, 1, 2, 3, 1, 2]
    for out_size in ((13, 11), (7, 9), (17, 5), (1, 1), (32, 32)):
        out, exp = _run(images, src, boxes, out_size)
        assert out.shape == (10, 3) + out_size and out.dtype == torch.float64
        np.testing.assert_allclose(out.numpy(), exp, rtol=0, atol=1e-12, err_msg=f"out_size {out_size}")


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), oh=st.integers(1, 12), ow=st.integers(1, 12),
       data=st.data(), seed=st.integers(0, 2 ** 31 - 1))
def test_crop_resize_hypothesis_boxes(h, w, oh, ow, data, seed):
    # boxes anywhere in the image, possibly reaching up to 3 pixels into the padding
    n = data.draw(st.integers(1, 4))
    boxes, src = [], []
    for _ in range(n):
        y0 = data.draw(st.integers(0, h - 1))
        x0 = data.draw(st.integers(0, w - 1))
        y1 = data.draw(st.integers(y0 + 1, h + 3))
        x1 = data.draw(st.integers(x0 + 1, w + 3))
        boxes.append((y0, x0, y1, x1))
        src.append(data.draw(st.integers(0, 1)))
    images = torch.randn(2, 2, h, w, generator=_gen(seed), dtype=torch.float64)
    out, exp = _run(images, src, boxes, (oh, ow))
    np.testing.assert_allclose(out.numpy(), exp, rtol=0, atol=1e-12)


def test_crop_resize_float32_and_duplicate_sizes():
    g = _gen(1)
    images = torch.rand(3, 1, 9, 9, generator=g)
    # several samples sharing a box size, interleaved with others, and reused sources
    boxes = [(0, 0, 4, 4), (5, 5, 9, 9), (1, 2, 6, 5), (2, 2, 6, 6), (0, 0, 3, 3), (6, 6, 10, 10)]
    src = [2, 0, 1, 2, 1, 0]
    out, exp = _run(images, src, boxes, (9, 9))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), exp, rtol=0, atol=2e-6)


def test_crop_resize_whole_image_same_size_is_identity_and_pad_value():
    g = _gen(2)
    images = torch.randn(2, 3, 7, 5, generator=g, dtype=torch.float64)
    out = crop_resize_ref(images, torch.tensor([1, 0]), torch.tensor([[0, 0, 7, 5], [0, 0, 7, 5]]), (7, 5))
    assert torch.equal(out, images.flip(0))
    # a box entirely in the padding reads only 0.5
    out = crop_resize_ref(images, torch.tensor([0]), torch.tensor([[7, 5, 9, 8]]), (4, 3))
    assert torch.equal(out, torch.full_like(out, 0.5))


def test_crop_resize_formation_boxes_at_decode_sizes():
    g = _gen(3)
    for size, channels in ((28, 1), (32, 3), (31, 2)):
        num = 3
        images = torch.rand(num, channels, size, size, generator=g, dtype=torch.float64)
        for k in (1, 2, 3, 4):
            boxes = formation_boxes(size, k)
            s = math.ceil(size / k)
            exp_boxes = [(i * s, j * s, (i + 1) * s, (j + 1) * s) for i in range(k) for j in range(k)]
            assert boxes.dtype == torch.int64 and boxes.tolist() == [list(b) for b in exp_boxes]
            src, bx = decode_plan(num, size, k)
            assert src.shape == (k * k * num,) and bx.shape == (k * k * num, 4)
            for t in range(k * k):
                for m in range(num):
                    assert int(src[t * num + m]) == m
                    assert bx[t * num + m].tolist() == list(exp_boxes[t])
            out = crop_resize_ref(images, src, bx, (size, size))
            exp = crop_resize_np(images.numpy(), [m for t in range(k * k) for m in range(num)],
                                 [exp_boxes[t] for t in range(k * k) for m in range(num)], (size, size))
            np.testing.assert_allclose(out.numpy(), exp, rtol=0, atol=1e-12, err_msg=f"size {size} k {k}")
            if k == 1:
                assert torch.equal(out, images)


def test_crop_resize_non_contiguous_inputs():
    g = _gen(4)
    base = torch.randn(5, 4, 12, 15, generator=g, dtype=torch.float64)
    images = base.transpose(2, 3)[:, ::2]  # [5, 2, 15, 12], non-contiguous
    assert not images.is_contiguous()
    boxes_c = torch.tensor([[0, 1, 9, 4], [3, 3, 8, 12], [10, 0, 17, 13], [2, 2, 5, 5]])
    boxes = boxes_c.t().contiguous().t()  # same values, column-major storage
    assert not boxes.is_contiguous()
    src = torch.tensor([4, 7, 3, 7, 1, 7, 2, 7])[::2]  # [4, 3, 1, 2], strided
    assert not src.is_contiguous()
    out = ops.crop_resize(images, src, boxes, (11, 6))
    exp = crop_resize_np(images.numpy(), src.tolist(), [tuple(b) for b in boxes_c.tolist()], (11, 6))
    np.testing.assert_allclose(out.numpy(), exp, rtol=0, atol=1e-12)


def test_crop_resize_empty():
    images = torch.zeros(2, 3, 8, 8)
    out = crop_resize_ref(images, torch.zeros(0, dtype=torch.long), torch.zeros(0, 4, dtype=torch.long), (5, 6))
    assert out.shape == (0, 3, 5, 6)


@pytest.mark.parametrize("box", [(3, 2, 3, 5), (3, 2, 2, 5), (1, 4, 6, 4), (1, 4, 6, 1), (-1, 0, 3, 3),
                                 (0, -2, 3, 3)])
def test_crop_resize_invalid_box_raises(box):
    images = torch.zeros(2, 1, 8, 8)
    boxes = torch.tensor([[0, 0, 4, 4], list(box)])
    with pytest.raises(ValueError):
        crop_resize_ref(images, torch.tensor([0, 1]), boxes, (8, 8))


def test_crop_resize_gradcheck():
    g = _gen(5)
    images = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    src = torch.tensor([0, 1, 1, 0])
    boxes = torch.tensor([[1, 1, 4, 5], [0, 0, 5, 6], [3, 4, 7, 8], [2, 2, 3, 3]])
    assert torch.autograd.gradcheck(lambda im: crop_resize_ref(im, src, boxes, (7, 4)), (images,))
    assert torch.autograd.gradcheck(lambda im: crop_resize_ref(im, src, boxes, (2, 3)), (images,))


def test_crop_resize_backward_only_inside_box():
    g = _gen(6)
    h, w = 11, 9
    cases = [((2, 3, 7, 6), (8, 8)), ((0, 0, 1, 1), (5, 5)), ((6, 4, 14, 12), (9, 7)), ((0, 0, 11, 9), (4, 3))]
    for (y0, x0, y1, x1), out_size in cases:
        images = torch.randn(3, 2, h, w, generator=g, dtype=torch.float64, requires_grad=True)
        out = crop_resize_ref(images, torch.tensor([1]), torch.tensor([[y0, x0, y1, x1]]), out_size)
        weight = torch.rand(out.shape, generator=g, dtype=torch.float64) + 0.1  # positive: no cancellation
        (out * weight).sum().backward()
        grad = images.grad
        inside = torch.zeros(3, 2, h, w, dtype=torch.bool)
        inside[1, :, y0:min(y1, h), x0:min(x1, w)] = True
        assert (grad[~inside] == 0).all(), f"gradient outside box {(y0, x0, y1, x1)}"
        if out_size[0] >= y1 - y0 and out_size[1] >= x1 - x0:
            # upsampling: every pixel of the box is read with positive weight
            assert (grad[inside] > 0).all(), f"box {(y0, x0, y1, x1)}: pixels inside the box got no gradient"
        assert grad[inside].sum() > 0
        # total gradient mass equals the mass that does not land on padding: check against numpy
        # via linearity: d sum(out*weight)/d images == adjoint computed by finite basis
        if y1 - y0 <= 2:
            basis_grad = np.zeros((2, h, w))
            for c in range(2):
                for yy in range(y0, min(y1, h)):
                    for xx in range(x0, min(x1, w)):
                        e = np.zeros((3, 2, h, w))
                        e[1, c, yy, xx] = 1.0
                        d = crop_resize_np(e, [1], [(y0, x0, y1, x1)], out_size) - \
                            crop_resize_np(np.zeros_like(e), [1], [(y0, x0, y1, x1)], out_size)
                        basis_grad[c, yy, xx] = float((d * weight.numpy()).sum())
            np.testing.assert_allclose(grad[1].numpy(), basis_grad, atol=1e-12)


# ----------------------------------------------------------------------------
# mix_init
# ----------------------------------------------------------------------------

def tile_sides(size, k):
    """IDC's split: size // k each, the first size % k tiles one pixel larger."""
    s, rem = divmod(size, k)
    return [s + 1 if i < rem else s for i in range(k)]


@pytest.mark.parametrize("size,k,ipc,channels", [(28, 2, 1, 1), (28, 2, 3, 1), (32, 2, 2, 3), (32, 3, 2, 3),
                                                 (32, 3, 1, 1), (28, 3, 1, 1)])
def test_mix_init_matches_nearest_tiles(size, k, ipc, channels):
    g = _gen(100 + size + k + ipc)
    real = torch.rand(ipc * k * k, channels, size, size, generator=g)
    out = mix_init(real, ipc, k)
    assert out.shape == (ipc, channels, size, size)
    sides = tile_sides(size, k)
    assert sum(sides) == size
    starts = np.cumsum([0] + sides[:-1])
    r = real.numpy()
    exp = np.full((ipc, channels, size, size), np.nan, dtype=np.float32)
    for m in range(ipc):
        for i in range(k):
            for j in range(k):
                t = i * k + j
                exp[m, :, starts[i]:starts[i] + sides[i], starts[j]:starts[j] + sides[j]] = \
                    nearest_ref(r[t * ipc + m], sides[i], sides[j])
    assert not np.isnan(exp).any()
    np.testing.assert_array_equal(out.numpy(), exp)


def test_mix_init_k2_is_stride_two_subsampling():
    # at even sizes with k=2 the nearest resize takes every second pixel: an explicit pixel loop
    g = _gen(7)
    real = torch.rand(4, 1, 28, 28, generator=g)
    out = mix_init(real, 1, 2)
    for t, (oy, ox) in enumerate(((0, 0), (0, 14), (14, 0), (14, 14))):
        for i in range(14):
            for j in range(14):
                assert out[0, 0, oy + i, ox + j] == real[t, 0, 2 * i, 2 * j]


def test_mix_init_wrong_count_fails():
    with pytest.raises(AssertionError):
        mix_init(torch.zeros(3, 1, 28, 28), 1, 2)


def test_mix_init_on_real_mnist(mnist_data):
    # the first IPC*k^2 images of class 3 in dataset order, as the engine uses them
    ipc, k = 2, 2
    real = mnist_data.first_of_class(3, ipc * k * k)
    assert torch.equal(mnist_data.labels[mnist_data.class_indices[3, :ipc * k * k]], torch.full((8,), 3))
    out = mix_init(real, ipc, k)
    r = real.numpy()
    for m in range(ipc):
        for t in range(4):
            i, j = divmod(t, 2)
            np.testing.assert_array_equal(out[m, :, 14 * i:14 * i + 14, 14 * j:14 * j + 14].numpy(),
                                          r[t * ipc + m][:, ::2, ::2])


# ----------------------------------------------------------------------------
# IDC's other decode types: multi and bound
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("ipc,factor,bound,parts", [
    # by hand from IDC's decode_zoom_bound: room = bound - ipc, count = min(room // f^2, budget), then
    # room = bound - decoded - budget; factor 1 takes the rest
    (20, 3, 128, [(0, 12, 3), (12, 3, 2), (15, 5, 1)]),  # 108 + 12 + 5 = 125 decoded
    (50, 3, 128, [(0, 8, 3), (8, 3, 2), (11, 39, 1)]),  # 72 + 12 + 39 = 123
    (10, 3, 128, [(0, 10, 3)]),  # all fit at factor 3: 90
    (30, 2, 64, [(0, 8, 2), (8, 22, 1)]),  # room 34: 34 // 4 = 8 at factor 2, 22 at 1: 32 + 22 = 54
])
def test_bound_parts_by_hand(ipc, factor, bound, parts):
    from udd_fast.decode import bound_parts
    assert bound_parts(ipc, factor, bound) == parts
    n = sum(c * f * f for _, c, f in parts)
    assert n <= bound and sum(c for _, c, _ in parts) == ipc
    src, boxes = decode_plan(ipc, 32, factor, None, "bound", bound)
    assert src.shape[0] == n


def test_multi_is_single_at_every_factor():
    size, ipc = 32, 3
    src, boxes = decode_plan(ipc, size, 3, None, "multi")
    assert src.shape[0] == ipc * (1 + 4 + 9)
    at = 0
    for f in (1, 2, 3):
        s1, b1 = decode_plan(ipc, size, f, None, "single")
        assert torch.equal(src[at:at + len(s1)], s1) and torch.equal(boxes[at:at + len(s1)], b1)
        at += len(s1)
    with pytest.raises(ValueError, match="unknown decode type"):
        decode_plan(ipc, size, 2, None, "zoom")


def test_a_whole_set_decodes_multi_or_single_for_evaluation():
    from udd_fast.decode import decode_all, eval_decode_type, training_set
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(4, 3, 16, 16, generator=g), torch.tensor([0, 0, 1, 1])
    x, y = decode_all(images, labels, 2, "multi")
    assert x.shape[0] == 4 * 5 and torch.equal(x[:4], images) and torch.equal(y[:4], labels)
    assert eval_decode_type("bound") == "single" and eval_decode_type("multi") == "multi"
    assert training_set(images, labels, 2, decode_type="bound")[0].shape[0] == 16  # IDC's test.py: bound as single
    with pytest.raises(ValueError, match="single or multi"):
        decode_all(images, labels, 2, "bound")


@pytest.mark.idc
@pytest.mark.parametrize("size,factor,ipc,kind,bound", [(32, 2, 3, "multi", 128), (32, 3, 2, "multi", 128),
                                                        (64, 3, 20, "bound", 128), (28, 3, 50, "bound", 128),
                                                        (32, 2, 30, "bound", 64)])
def test_multi_and_bound_equal_idcs_code(size, factor, ipc, kind, bound):
    """IDC's Synthesizer.decode_zoom_multi / decode_zoom_bound, loaded from its condense.py, against the plan
    applied by crop_resize."""
    from idc_code import load_idc_functions, make_idc_synth, require_idc_src
    idc = load_idc_functions(require_idc_src())
    synth = make_idc_synth((size, size))
    synth.decode_zoom = lambda *a: idc.decode_zoom(synth, *a)
    g = torch.Generator().manual_seed(size + ipc)
    img, target = torch.rand(ipc, 3, size, size, generator=g), torch.arange(ipc) + 10
    if kind == "multi":
        ref, ref_t = idc.decode_zoom_multi(synth, img, target, factor)
    else:
        ref, ref_t = idc.decode_zoom_bound(synth, img, target, factor, bound=bound)
    src, boxes = decode_plan(ipc, size, factor, None, kind, bound)
    out = ops.crop_resize(img, src, boxes, (size, size))
    assert out.shape == ref.shape and torch.equal(target[src], ref_t)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
