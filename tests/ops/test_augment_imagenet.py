"""IDC's evaluation augmentation on ImageNet (udd_fast/augment_imagenet.py): the batched chain against the
chain written out one sample at a time (torchvision's RandomResizedCrop draw and its bilinear resize,
IDC's jitter and lighting formulas) from the same draws; against IDC's own ColorJitter and Lighting where
UDD_FAST_IDC_SRC is set; and how it is chosen and keyed."""
import math
import random

import pytest
import torch
import torch.nn.functional as F

from udd_fast import augment_imagenet as ai
from udd_fast import rng
from udd_fast.augment import Strategy
from udd_fast.config import build_config, setting_problem, settings
from udd_fast.train import augment_batch


def _grey(img):
    return 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]


def _one_sample(img, u, z):
    """The chain on one image [3, S, S] from its draws, written out as torchvision and IDC write it."""
    size = img.shape[-1]
    area = size * size
    for a in range(ai.ATTEMPTS):  # torchvision's RandomResizedCrop.get_params
        s_u, r_u, t_u, l_u = u[4 * a:4 * a + 4].tolist()
        target = area * (0.5 + 0.5 * s_u)
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * r_u)
        w, h = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < w <= size and 0 < h <= size:
            i, j = int(t_u * (size - h + 1)), int(l_u * (size - w + 1))
            break
    else:
        i, j, h, w = 0, 0, size, size
    out = F.interpolate(img[None, :, i:i + h, j:j + w], size=(size, size), mode="bilinear", align_corners=False,
                        antialias=True)[0]
    if u[ai.FLIP] < 0.5:
        out = out.flip(-1)
    for op in ai.ORDERS[int(u[ai.ORDER] * 6)]:
        alpha = float((2 * u[(ai.BRIGHT, ai.CONTRAST, ai.SAT)[op]] - 1) * 0.4)
        if op == 0:
            out = out.lerp(torch.zeros_like(out), alpha)
        elif op == 1:
            out = out.lerp(torch.full_like(out, float(_grey(out).mean())), alpha)
        else:
            out = out.lerp(_grey(out).expand_as(out), alpha)
    vec, val = torch.tensor(ai.EIGVEC).double(), torch.tensor(ai.EIGVAL).double()  # float32 constants, as IDC's
    rgb = (vec * (z * 0.1).view(1, 3) * val.view(1, 3)).sum(1)
    return out + rgb.view(3, 1, 1).to(out.dtype)


@pytest.mark.parametrize("size", [16, 64])
def test_batched_chain_equals_the_chain_one_sample_at_a_time(device, size):
    n = 48
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(n, 3, size, size, dtype=torch.float64, generator=gen)
    keys = rng.subkeys(rng.key(7, "aug"), torch.arange(n))
    out = ai.imagenet_augment(x.to(device), keys.to(device)).cpu()
    u, z = ai.draws(keys)
    for k in range(n):
        torch.testing.assert_close(out[k], _one_sample(x[k], u[k], z[k]), rtol=0, atol=1e-9, msg=f"sample {k}")
    # the draws met every branch: crops smaller than the image, the fallback-free and whole-image crops, both flips
    boxes = ai.crop_boxes(u, size)
    sides = (boxes[:, 2:] - boxes[:, :2])
    assert (sides < size).any() and (u[:, ai.FLIP] < 0.5).any() and (u[:, ai.FLIP] >= 0.5).any()
    assert len({int(v) for v in (u[:, ai.ORDER] * 6).long()}) >= 4


def test_crop_draw_follows_torchvision_ranges():
    """Over 20,000 draws at 224 px: every box inside the image, its area 0.5-1 of it up to rounding, its
    ratio within 3/4-4/3 up to rounding, the area distributed as torchvision's draw distributes it."""
    n, size = 20000, 224
    u, _ = ai.draws(rng.subkeys(3, torch.arange(n)))
    b = ai.crop_boxes(u, size)
    h, w = (b[:, 2] - b[:, 0]).double(), (b[:, 3] - b[:, 1]).double()
    assert (b[:, :2] >= 0).all() and (b[:, 2:] <= size).all() and (h > 0).all() and (w > 0).all()
    area = h * w / size ** 2
    assert area.min() > 0.49 and area.max() <= 1.0
    assert (w / h).min() > 0.74 and (w / h).max() < 4 / 3 + 0.01
    # the area's distribution: torchvision's draw made with Python's own generator (its law, other numbers)
    py = random.Random(0)
    ref = []
    for _ in range(n):
        for _ in range(ai.ATTEMPTS):
            target = size * size * py.uniform(0.5, 1.0)
            ratio = math.exp(py.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
            if 0 < cw <= size and 0 < ch <= size:
                ref.append(cw * ch / size ** 2)
                break
        else:
            ref.append(1.0)
    ref = torch.tensor(ref, dtype=torch.float64)
    for q in (0.1, 0.5, 0.9):  # standard error of a quantile over 20,000 draws: about 0.002
        assert abs(float(area.quantile(q) - ref.quantile(q))) < 0.01, q


@pytest.mark.idc
@pytest.mark.filterwarnings("ignore:This overload of add_ is deprecated")  # IDC's Grayscale
def test_matches_idc_colour_jitter_and_lighting(monkeypatch):
    """IDC's own ColorJitter and Lighting (misc/utils.py) fed the same draws: its order through its
    random.shuffle, its weights through random.uniform, its lighting alphas through Tensor.normal_."""
    from idc_code import load_idc_colour_transforms, require_idc_src
    idc = load_idc_colour_transforms(require_idc_src())
    n, size = 12, 8
    x = torch.randn(n, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    u, z = ai.draws(rng.subkeys(5, torch.arange(n)))
    ours = ai.lighting(ai.jitter(x, u), z)
    jitter = idc.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)
    lighting = idc.Lighting(0.1, list(ai.EIGVAL), [list(r) for r in ai.EIGVEC])
    for k in range(n):
        order = ai.ORDERS[int(u[k, ai.ORDER] * 6)]
        weights = [float((2 * u[k, (ai.BRIGHT, ai.CONTRAST, ai.SAT)[op]] - 1) * 0.4) for op in order]

        class Draws:  # IDC's module-level `random`, answering with this sample's draws
            @staticmethod
            def shuffle(ts):
                ts[:] = [ts[op] for op in order]

            @staticmethod
            def uniform(lo, hi):
                assert (lo, hi) == (-0.4, 0.4)
                return weights.pop(0)

        monkeypatch.setattr(idc, "random", Draws)
        monkeypatch.setattr(torch.Tensor, "normal_", lambda t, mean, std, zk=z[k]: t.copy_(zk * std + mean))
        theirs = lighting(jitter(x[k].clone()))
        monkeypatch.undo()
        torch.testing.assert_close(ours[k], theirs, rtol=0, atol=1e-12, msg=f"sample {k}")


def test_keyed_per_sample_and_chosen_by_the_strategy():
    x = torch.rand(6, 3, 16, 16)
    s = Strategy.parse("imagenet")
    assert s.imagenet and str(s) == "imagenet" and Strategy.parse(str(s)) == s
    a = augment_batch(x, s, 11)
    assert torch.equal(a, augment_batch(x, s, 11))
    assert not torch.equal(a, augment_batch(x, s, 12))
    # a sample's draw is its position's: a rank that holds positions 3..5 augments them as the whole batch does
    torch.testing.assert_close(augment_batch(x[3:], s, 11, positions=torch.arange(3, 6)), a[3:], rtol=0, atol=0)
    with pytest.raises(ValueError, match="square RGB"):
        augment_batch(torch.rand(2, 1, 16, 16), s, 11)


def test_imagenet_settings_evaluate_with_it():
    for name, k in (("imagenet10", 10), ("imagenet100", 100)):
        cfg = build_config(name, 1, "smoke", 64, 224, num_classes=k)
        assert cfg.eval.eval_aug == "imagenet" and cfg.eval.eval_cutmix
    assert build_config("tinyimagenet", 1, "smoke", 64, 64, num_classes=200).eval.eval_aug != "imagenet"
    assert build_config("cifar10", 1, "smoke", 32, 32).eval.eval_aug == "color_crop_flip_scale_rotate"
    fields = {f.name: f for f in settings()}
    for name in ("match_aug", "net_aug"):
        assert "IDC's evaluation augmentation on ImageNet" in setting_problem(fields[name], "imagenet")
        assert setting_problem(fields[name], "color_crop") is None
    assert setting_problem(fields["eval_aug"], "imagenet") is None
