"""Network training on real or synthetic images: IDC's network update and its evaluation protocol.

Random draws (batch order, per-sample augmentation, the op choice, CutMix) are keyed by the
batch number, so training is reproducible batch by batch and across forms of the loop.
"""
import math

import torch
import torch.nn.functional as F

from . import ops, rng
from .augment import Strategy, sample_params
from .augment_imagenet import imagenet_augment
from .sampling import EpochBatches

CUTMIX_P = 0.5


def normalize(x, mean, std):
    return (x - mean) / std


def cutmix_box(key: int, h: int, w: int, p: float = CUTMIX_P):
    """IDC's CutMix decision for one batch (beta 1), drawn on the host from the batch's key: None (no
    mix, probability 1-p) or ((x1, x2, y1, y2) box, ratio of the kept area)."""
    u = rng.uniform_host(key, 4)
    if u[0] >= p:
        return None
    lam = u[1]  # Beta(1, 1)
    cut = math.sqrt(1.0 - lam)
    cut_w, cut_h = int(h * cut), int(w * cut)  # IDC names dim 2 'W' and dim 3 'H'
    cx, cy = int(u[2] * h), int(u[3] * w)
    x1, x2 = min(max(cx - cut_w // 2, 0), h), min(max(cx + cut_w // 2, 0), h)
    y1, y2 = min(max(cy - cut_h // 2, 0), w), min(max(cy + cut_h // 2, 0), w)
    return (x1, x2, y1, y2), 1.0 - ((x2 - x1) * (y2 - y1) / (h * w))


def cutmix_on_device(key: torch.Tensor, n: torch.Tensor, h: int, w: int, padded: int, dtype, p: float = CUTMIX_P):
    """`cutmix_box` and `cutmix_partners(..., padded)` computed on the device from a device key and a
    device batch size n, bit for bit: (box as a [1, 1, h, w] bool mask, empty when the batch does not
    mix; partners [padded]; kept ratio, a 0-dim `dtype` tensor, 1 when it does not mix)."""
    u = rng.uniform(key.reshape(1), 4, torch.float64)[0]
    cut = torch.sqrt(1.0 - u[1])
    cut_w, cut_h = torch.floor(h * cut).long(), torch.floor(w * cut).long()  # int() of a non-negative float
    cx, cy = torch.floor(u[2] * h).long(), torch.floor(u[3] * w).long()
    x1, x2 = (cx - cut_w // 2).clamp(0, h), (cx + cut_w // 2).clamp(0, h)
    y1, y2 = (cy - cut_h // 2).clamp(0, w), (cy + cut_h // 2).clamp(0, w)
    mixes = u[0] < p
    rows = torch.arange(h, device=key.device).view(h, 1)
    cols = torch.arange(w, device=key.device).view(1, w)
    mask = (rows >= x1) & (rows < x2) & (cols >= y1) & (cols < y2) & mixes
    ratio = torch.where(mixes, 1.0 - ((x2 - x1) * (y2 - y1)).double() / (h * w), 1.0).to(dtype)
    return mask.view(1, 1, h, w), cutmix_partners(key, n, key.device, padded), ratio


def cutmix_partners(key, n, device, padded: int = None) -> torch.Tensor:
    """CutMix's partner permutation of a batch of n, drawn on the device; `padded` >= n gives it that
    length, the positions from n on mapping to themselves (the first n entries are the same). `key` and
    `n` are ints, or (the static path) a device key and a device batch size: the same permutation."""
    on_device = isinstance(key, torch.Tensor)
    keys = rng.fold(key.reshape(1), 1) if on_device else rng.key_tensor(rng.fold_int(key, 1), device)
    if padded is None:
        return rng.permutation(keys, n)[0]
    valid = n.reshape(1) if on_device else torch.full((1,), n, dtype=torch.int64, device=device)
    return rng.permutation(keys, padded, valid=valid)[0]


def cutmix_draw(key: int, n: int, h: int, w: int, device, p: float = CUTMIX_P):
    """IDC's CutMix draw for a batch of n: None (no mix) or (box, partner permutation [n], kept ratio).
    The decision and the box come from the host, so nothing waits on the device."""
    box = cutmix_box(key, h, w, p)
    if box is None:
        return None
    return box[0], cutmix_partners(key, n, device), box[1]


def augment_batch(x, strategy: Strategy, key: int, positions=None):
    """Per-sample augmentation of a normalized batch, keyed by the batch's key and each sample's
    position in its batch (`positions`, default 0..n-1: a rank's part of a global batch passes its own)."""
    if strategy == Strategy():
        return x
    if positions is None:
        positions = torch.arange(x.shape[0], device=x.device)
    if strategy.imagenet:
        return imagenet_augment(x, rng.subkeys(key, positions))
    return ops.diff_augment(x, augment_params(strategy, key, positions, x.shape[-1]), strategy)


def augment_params(strategy: Strategy, key, positions: torch.Tensor, size: int) -> torch.Tensor:
    """A batch's per-sample augmentation rows: keyed by the batch's key (an int, or a device key of
    rng.key_on) and each sample's position, the op drawn once per batch (IDC)."""
    if isinstance(key, torch.Tensor):
        return sample_params(rng.fold(key.reshape(1), positions), strategy, size, op_key=rng.key_on(key, "op"))
    return sample_params(rng.subkeys(key, positions), strategy, size, op_key=rng.key(key, "op"))


class SoftLabels:
    """A teacher's soft labels, as DD-Ranking's evaluation uses them (its soft_label_mode 'M' and default
    criterion): the teacher (in eval mode) labels every augmented, mixed batch afresh, and the student learns
    KL(softmax(teacher / T) || softmax(student / T)), batch mean, T = 1.2 (its KLDivergenceLoss's default)."""

    def __init__(self, teacher, temperature: float = 1.2):
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"the soft labels' temperature must be a finite number > 0 (got {temperature})")
        self.teacher, self.temperature = teacher.eval(), float(temperature)

    def loss(self, out, x):
        with torch.no_grad():
            target = F.softmax(self.teacher(x.to(next(self.teacher.parameters()).dtype)).to(out.dtype)
                               / self.temperature, dim=1)
        return F.kl_div(F.log_softmax(out / self.temperature, dim=1), target, reduction="batchmean")


def train_step(model, opt, load, n: int, size: int, strategy: Strategy, use_cutmix: bool, key: int, part=None,
               reduce_grads=None, cutmix_p: float = CUTMIX_P, soft: SoftLabels = None):
    """One SGD step on a batch of n normalized size x size images: per-sample augmentation, optional
    CutMix, cross-entropy. `load(positions)` gives (images, labels) at batch positions.

    `part` = (lo, hi): this rank computes positions [lo, hi) of a batch split across ranks. The
    augmentation is keyed per position and CutMix is drawn over the whole batch, so a rank augments
    its own samples and, when a mix is drawn, its samples' partners itself (no images are exchanged).
    Its loss is its share of the batch mean, and `reduce_grads(model)` sums the gradients over the
    ranks before the step: the update of the whole batch, up to the order of the sum over samples.
    Returns the (share of the) loss, or None for an empty share.

    `soft` (a SoftLabels, one process only): the loss is the teacher's soft labels' on the batch as augmented
    and mixed, in place of the hard labels' (CutMix then mixes the images, the teacher labels the mix).
    """
    if soft is not None and part is not None:
        raise ValueError("soft labels train in one process: a batch split across ranks has no teacher")
    device = next(model.parameters()).device
    lo, hi = (0, n) if part is None else part
    m = hi - lo
    pos = torch.arange(lo, hi, device=device)
    draw = cutmix_draw(rng.key(key, "cutmix"), n, size, size, device, cutmix_p) if use_cutmix else None
    # a share loads its samples' CutMix partners after its own samples; the whole batch holds them
    need = pos if draw is None or part is None else torch.cat([pos, draw[1][lo:hi]])
    opt.zero_grad(set_to_none=True)
    loss = None
    if m:
        x, y, y_b, ratio = batch_inputs(load, need, m, strategy, draw, key, whole=part is None)
        out = model(x)
        if soft is not None:
            loss = soft.loss(out, x)
        elif part is None:
            loss = batch_loss(out, y, y_b, ratio)
        else:
            loss = F.cross_entropy(out, y, reduction="sum") / n
            if y_b is not None:
                loss = loss * ratio + F.cross_entropy(out, y_b, reduction="sum") / n * (1.0 - ratio)
        loss.backward()
    if part is not None:
        reduce_grads(model)
    opt.step()
    return None if loss is None else loss.detach()


def batch_inputs(load, need, m: int, strategy: Strategy, draw, key: int, whole: bool = True):
    """A batch's training inputs as train_step makes them: (x, y, y_b or None, kept ratio or None) for its m
    samples, `need` the positions loaded (the whole batch, or a share followed by its CutMix partners),
    augmented per position, then mixed by `draw` (cutmix_draw's, or None)."""
    x, y = load(need)
    with torch.no_grad():
        x = augment_batch(x, strategy, rng.key(key, "aug"), positions=need)
    y_b, ratio = None, None
    if draw is not None:
        (x1, x2, y1, y2), perm, ratio = draw
        if whole:
            box, y_b = x[perm, :, x1:x2, y1:y2], y[perm]
        else:
            box, y_b = x[m:, :, x1:x2, y1:y2], y[m:]
        x = x[:m].clone()
        x[:, :, x1:x2, y1:y2] = box
    return x, y[:m], y_b, ratio


def batch_loss(out, y, y_b, ratio):
    """The batch mean as F.cross_entropy sums it, CutMix's mix of the two labels' where y_b is given (IDC's)."""
    loss = F.cross_entropy(out, y)
    if y_b is not None:
        loss = loss * ratio + F.cross_entropy(out, y_b) * (1.0 - ratio)
    return loss


def fit(model, load, batches: EpochBatches, steps: int, size: int, strategy: Strategy, use_cutmix: bool, step_key,
        schedule: str, on_epoch=None, on_step=None, lr: float = 0.01, weight_decay: float = 5e-4,
        cutmix_p: float = CUTMIX_P, soft: SoftLabels = None):
    """Train `model` on `steps` batches of `batches` (batch numbers 0, 1, ...) with IDC's recipe: SGD
    (lr 0.01, momentum 0.9, weight decay 5e-4, IDC's defaults; 0.1 and 1e-4 for 100 ImageNet classes), one
    train_step per batch, the lr x0.2 at 2/3 and 5/6 of
    the training. `schedule` counts those in epochs ('epoch': the rate changes at an epoch's end;
    evaluation) or in batches ('step': the UDD proxy, whose training may be a fraction of an epoch).

    load(idx) gives (normalized images, labels) at dataset indices idx; step_key(b) keys batch b's
    random draws; on_epoch(epoch) follows each whole epoch (from 1), on_step(b, loss) each batch; `soft`: a
    teacher's soft labels in place of the hard ones (train_step)."""
    if schedule not in ("epoch", "step"):
        raise ValueError(f"unknown schedule {schedule!r} (epoch or step)")
    opt = make_sgd(model, lr, weight_decay=weight_decay)
    units = steps // batches.per_epoch if schedule == "epoch" else steps
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2 * units // 3, 5 * units // 6], gamma=0.2)
    for b in range(steps):
        idx = batches.indices(b)
        loss = train_step(model, opt, lambda pos: load(idx[pos]), idx.shape[0], size, strategy, use_cutmix,
                          step_key(b), cutmix_p=cutmix_p, soft=soft)
        if on_step:
            on_step(b, loss)
        if schedule == "step":
            sched.step()
        elif (b + 1) % batches.per_epoch == 0:
            sched.step()
            if on_epoch:
                on_epoch((b + 1) // batches.per_epoch)


def make_sgd(model, lr=0.01, momentum=0.9, weight_decay=5e-4):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


@torch.no_grad()
def accuracy(model, images_u8, labels, mean, std, batch=500):
    """Top-1 accuracy (%) of model (in eval mode) on uint8 images (at least one: no images, no accuracy)."""
    if images_u8.shape[0] == 0:
        raise ValueError("no test images: there is no accuracy to measure")
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, images_u8.shape[0], batch):
        x = normalize(images_u8[i:i + batch].float() / 255.0, mean, std)
        correct += (model(x.to(next(model.parameters()).dtype)).argmax(1) == labels[i:i + batch]).sum().item()
    model.train(was_training)
    return 100.0 * correct / images_u8.shape[0]
