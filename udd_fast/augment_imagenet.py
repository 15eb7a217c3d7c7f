"""IDC's evaluation augmentation on ImageNet (`--eval-aug imagenet`): its data.py transform_imagenet with
augment=True, which its argument.py selects wherever DSA is off, i.e. on ImageNet. Per sample, in order:

1. RandomResizedCrop(size, scale=(0.5, 1), ratio=(3/4, 4/3)), torchvision's draw (10 attempts, then the
   whole image) and its bilinear resize (an upscale here, where antialiasing changes nothing);
2. RandomHorizontalFlip (p 0.5);
3. IDC's ColorJitter(0.4, 0.4, 0.4): brightness, contrast and saturation as lerps (towards 0, the mean of
   the grey image, the grey image), each weight uniform in [-0.4, 0.4], in a random order;
4. IDC's Lighting(0.1): AlexNet's PCA colour noise, alpha ~ N(0, 0.1) per eigenvector.

Batched on the device, keyed per sample like the DSA draws (rng.py): the same numbers on every device and
rank. Applied, like DSA, to the normalized batch: IDC applies it to its condensed tensors, which are in
normalized space. (IDC then normalizes them a second time, its test images once; we normalize once.)
"""
import math

import torch

from . import ops, rng

SCALE = (0.5, 1.0)
LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))
ATTEMPTS = 10
JITTER = 0.4
LIGHTING_STD = 0.1
EIGVAL = (0.2175, 0.0188, 0.0045)
EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
GREY = (0.299, 0.587, 0.114)

# the columns of a sample's uniform draws: per attempt (scale, log-ratio, top, left), then the flip, the
# three jitter weights (brightness, contrast, saturation) and the jitter order
FLIP = 4 * ATTEMPTS
BRIGHT, CONTRAST, SAT = FLIP + 1, FLIP + 2, FLIP + 3
ORDER = FLIP + 4
NUM_UNIFORMS = ORDER + 1
ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))  # of (brightness, contrast, saturation)


def draws(keys: torch.Tensor):
    """(uniforms [n, NUM_UNIFORMS] float64, lighting normals [n, 3] float64) of per-sample keys."""
    return rng.uniform(keys, NUM_UNIFORMS, torch.float64), rng.normal(rng.fold(keys, 1), 3, torch.float64)


def crop_boxes(u: torch.Tensor, size: int) -> torch.Tensor:
    """[n, 4] int64 boxes (top, left, bottom, right) of RandomResizedCrop on a size x size image: the first
    of ATTEMPTS draws that fits (torchvision's get_params, its rounding included), else the whole image
    (its fallback for a square image, whose ratio lies inside the range)."""
    att = u[:, :FLIP].view(-1, ATTEMPTS, 4)
    area = float(size * size) * (SCALE[0] + (SCALE[1] - SCALE[0]) * att[..., 0])
    ratio = torch.exp(LOG_RATIO[0] + (LOG_RATIO[1] - LOG_RATIO[0]) * att[..., 1])
    w = torch.round(torch.sqrt(area * ratio)).long()
    h = torch.round(torch.sqrt(area / ratio)).long()
    fits = (w > 0) & (w <= size) & (h > 0) & (h <= size)
    top = torch.floor(att[..., 2] * (size - h + 1)).long()
    left = torch.floor(att[..., 3] * (size - w + 1)).long()
    first = torch.argmax(fits.long(), dim=1, keepdim=True)  # the first attempt that fits (0 when none)
    pick = lambda t: t.gather(1, first)[:, 0]  # noqa: E731
    found = fits.any(1)
    h, w, top, left = (torch.where(found, pick(t), d) for t, d in ((h, size), (w, size), (top, 0), (left, 0)))
    return torch.stack([top, left, top + h, left + w], 1)


def _grey(x):
    return GREY[0] * x[:, 0:1] + GREY[1] * x[:, 1:2] + GREY[2] * x[:, 2:3]


def jitter(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """IDC's ColorJitter on a batch: each sample's three lerps in its drawn order."""
    n = x.shape[0]
    weight = ((u[:, [BRIGHT, CONTRAST, SAT]] * 2 - 1) * JITTER).to(x.dtype)  # [n, 3]
    order = torch.tensor(ORDERS, device=x.device)[(u[:, ORDER] * len(ORDERS)).long().clamp_max(len(ORDERS) - 1)]
    for step in range(3):
        op = order[:, step:step + 1]
        a = weight.gather(1, op).view(n, 1, 1, 1)
        op = op.view(n, 1, 1, 1)
        grey = _grey(x)
        bright = torch.lerp(x, torch.zeros_like(x), a)
        contrast = torch.lerp(x, grey.mean(dim=(1, 2, 3), keepdim=True).expand_as(x), a)
        sat = torch.lerp(x, grey.expand_as(x), a)
        x = torch.where(op == 0, bright, torch.where(op == 1, contrast, sat))
    return x


def lighting(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """IDC's Lighting: x + sum_k eigvec[c, k] * alpha[k] * eigval[k] per channel c, alpha = 0.1 z."""
    # IDC holds the constants as float32 tensors: the same rounded values here
    vec = torch.tensor(EIGVEC, dtype=torch.float32, device=x.device).double()
    val = torch.tensor(EIGVAL, dtype=torch.float32, device=x.device).double()
    rgb = ((z * LIGHTING_STD).unsqueeze(1) * vec.unsqueeze(0) * val.view(1, 1, 3)).sum(2)  # [n, 3]
    return x + rgb.to(x.dtype).view(-1, 3, 1, 1)


def imagenet_augment(x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The chain on a batch x [n, 3, S, S] (normalized), sample i drawn from keys[i]."""
    n, c, h, w = x.shape
    if c != 3 or h != w:
        raise ValueError(f"the ImageNet augmentation takes square RGB images, not {c} x {h} x {w}")
    u, z = draws(keys)
    boxes = crop_boxes(u, h)
    x = ops.crop_resize(x, torch.arange(n, device=x.device), boxes, (h, w), validate=False)
    x = torch.where((u[:, FLIP] < 0.5).view(n, 1, 1, 1), x.flip(-1), x)
    return lighting(jitter(x, u), z)
