"""Network training on real or synthetic images: IDC's network update and its evaluation protocol.

Random draws (batch order, per-sample augmentation, the op choice, CutMix) are keyed by the
batch number, so training is reproducible batch by batch and across forms of the loop.
"""
import math

import torch
import torch.nn.functional as F

from . import ops, rng
from .augment import Strategy, sample_params

CUTMIX_P = 0.5


def normalize(x, mean, std):
    return (x - mean) / std


def cutmix_draw(key: int, n: int, h: int, w: int, device, p: float = CUTMIX_P):
    """IDC's CutMix draw for a batch of n (beta 1): None (no mix, probability 1-p) or
    ((x1, x2, y1, y2) box, partner permutation [n], ratio of the kept area). One draw per batch."""
    u = rng.uniform(torch.tensor([key], device=device), 4, torch.float64)[0].tolist()
    if u[0] >= p:
        return None
    lam = u[1]  # Beta(1, 1)
    cut = math.sqrt(1.0 - lam)
    cut_w, cut_h = int(h * cut), int(w * cut)  # IDC names dim 2 'W' and dim 3 'H'
    cx, cy = int(u[2] * h), int(u[3] * w)
    x1, x2 = min(max(cx - cut_w // 2, 0), h), min(max(cx + cut_w // 2, 0), h)
    y1, y2 = min(max(cy - cut_h // 2, 0), w), min(max(cy + cut_h // 2, 0), w)
    perm = rng.permutation(rng.subkeys(key, [1], device=device), n)[0]
    ratio = 1.0 - ((x2 - x1) * (y2 - y1) / (h * w))
    return (x1, x2, y1, y2), perm, ratio


def cutmix(x, y, key: int, p: float = CUTMIX_P):
    """IDC's CutMix: with probability p paste a box from a permuted partner.

    Returns (x, y_partner, ratio) where the loss is ratio*CE(y) + (1-ratio)*CE(y_partner);
    y_partner is None when no mix is drawn.
    """
    n, _, h, w = x.shape
    draw = cutmix_draw(key, n, h, w, x.device, p)
    if draw is None:
        return x, None, 1.0
    (x1, x2, y1, y2), perm, ratio = draw
    x = x.clone()
    x[:, :, x1:x2, y1:y2] = x[perm, :, x1:x2, y1:y2]
    return x, y[perm], ratio


def augment_batch(x, strategy: Strategy, key: int, positions=None):
    """Per-sample augmentation of a normalized batch, keyed by the batch's key and each sample's
    position in its batch (`positions`, default 0..n-1: a rank's part of a global batch passes its own)."""
    if strategy == Strategy():
        return x
    if positions is None:
        positions = torch.arange(x.shape[0], device=x.device)
    keys = rng.subkeys(key, positions)
    params = sample_params(keys, strategy, x.shape[-1], op_key=rng.key(key, "op"))
    return ops.diff_augment(x, params, strategy)


def train_step(model, opt, x, y, strategy: Strategy, use_cutmix: bool, key: int):
    """One SGD step on a normalized batch: per-sample augmentation, optional CutMix, CE."""
    with torch.no_grad():
        x = augment_batch(x, strategy, rng.key(key, "aug"))
    y_b, ratio = None, 1.0
    if use_cutmix:
        x, y_b, ratio = cutmix(x, y, rng.key(key, "cutmix"))
    out = model(x)
    loss = F.cross_entropy(out, y)
    if y_b is not None:
        loss = loss * ratio + F.cross_entropy(out, y_b) * (1.0 - ratio)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def train_step_part(model, opt, load, n: int, lo: int, hi: int, size: int, strategy: Strategy, use_cutmix: bool,
                    key: int, reduce_grads):
    """train_step of a global batch of n split across ranks: this rank computes positions [lo, hi).

    `load(positions)` gives (normalized images, labels) at global positions. The augmentation is keyed
    per position and CutMix is drawn over the global batch, so a rank augments its own samples and,
    when a mix is drawn, its samples' partners itself (no images are exchanged). Its loss is its share
    of the global mean, and `reduce_grads(model)` sums the gradients over the ranks before the step:
    the update of train_step on the whole batch, up to the order of the sum over samples.
    """
    device = next(model.parameters()).device
    pos = torch.arange(lo, hi, device=device)
    draw = cutmix_draw(rng.key(key, "cutmix"), n, size, size, device) if use_cutmix else None
    need = pos if draw is None else torch.cat([pos, draw[1][lo:hi]])
    opt.zero_grad(set_to_none=True)
    m = hi - lo
    if m:
        x, y = load(need)
        with torch.no_grad():
            x = augment_batch(x, strategy, rng.key(key, "aug"), positions=need)
        if draw is not None:
            (x1, x2, y1, y2), _, ratio = draw
            mixed = x[:m].clone()
            mixed[:, :, x1:x2, y1:y2] = x[m:, :, x1:x2, y1:y2]
            x, y_b = mixed, y[m:]
        out = model(x[:m])
        loss = F.cross_entropy(out, y[:m], reduction="sum") / n
        if draw is not None:
            loss = loss * ratio + F.cross_entropy(out, y_b, reduction="sum") / n * (1.0 - ratio)
        loss.backward()
    reduce_grads(model)
    opt.step()


def make_sgd(model, lr=0.01, momentum=0.9, weight_decay=5e-4):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


@torch.no_grad()
def accuracy(model, images_u8, labels, mean, std, batch=500):
    """Top-1 accuracy (%) of model (in eval mode) on uint8 images."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, images_u8.shape[0], batch):
        x = normalize(images_u8[i:i + batch].float() / 255.0, mean, std)
        correct += (model(x).argmax(1) == labels[i:i + batch]).sum().item()
    model.train(was_training)
    return 100.0 * correct / max(1, images_u8.shape[0])
