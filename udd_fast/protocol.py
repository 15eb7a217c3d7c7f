"""IDC's evaluation protocol (docs/method.md section 1): train fresh networks on a distilled set's
training set and test them on the real test set.

Decode the stored images (formations, plus UDD's region views where used), train a fresh network from
scratch on them (SGD 0.01, momentum 0.9, wd 5e-4, batch 64 (for 100 ImageNet classes 0.1, 1e-4, 128), lr x0.2 at 2/3 and 5/6 of the epochs,
per-sample augmentation, CutMix p 0.5), test on the real test set. IDC validates 4 times and logs
best and last; we report the last-epoch accuracy as mean +- std over runs, with best-of-4 beside it.

The evaluation augmentation follows IDC's code: its `dsa_strategy` (flip dropped for SVHN and MNIST),
without cutout whenever CutMix is on (IDC's `remove_aug(args.dsa_strategy, 'cutout')` under its
default `--mixup cut`); cutout stays only where CutMix is off (SVHN at factor 1 and IPC 1).
"""
import statistics
import time

import torch

from . import logs, rng
from .augment import Strategy
from .config import EvalConfig
from .models import ARCHS, make_model
from .sampling import EpochBatches
from .engine.network_update import sgd_
from .train import accuracy, batch_inputs, batch_loss, cutmix_draw, fit, normalize


def test_count(data, test_limit: int) -> int:
    """How many test images an evaluation uses: the first `test_limit` (0: all), at most all there are."""
    n = int(data.test_images.shape[0])
    return min(test_limit, n) if test_limit else n


def train_once(x, y, data, ev: EvalConfig, key: int, progress: bool = False, desc: str = "", final: list = None,
               soft=None, trained: list = None):
    """Train a fresh ev.eval_arch on normalized x (in x's dtype); test ev.eval_validations times, evenly spaced,
    the last at the final epoch (IDC: 4). Returns (last accuracy, best validation accuracy); the trained
    network's parameters are appended to `final` when given (comparisons), the network itself to `trained`
    (the soft labels' teacher). soft: a train.SoftLabels, learnt in place of the labels y."""
    info, epochs, validations = data.info, ev.eval_epochs, ev.eval_validations
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng.key(key, "init") & 0x7FFF_FFFF_FFFF_FFFF)
        model = make_model(ev.eval_arch, info.num_classes, info.channels, info.size)
    model = model.to(x.device, x.dtype).train()
    batches = EpochBatches(x.shape[0], ev.eval_batch, key, "batches", x.device)
    val_every = max(1, epochs // max(1, validations))
    n_test = test_count(data, ev.eval_test_limit)
    acc = {"last": 0.0, "best": 0.0}
    bar = logs.bar(epochs, desc, progress, leave=False)

    def validate(epoch):
        bar.update(1)
        if (epoch % val_every == 0 and epoch // val_every <= validations) or epoch == epochs:
            acc["last"] = accuracy(model, data.test_images[:n_test], data.test_labels[:n_test], data.mean, data.std)
            acc["best"] = max(acc["best"], acc["last"])
            bar.set_postfix(acc=f"{acc['last']:.1f}")

    fit(model, lambda idx: (x[idx], y[idx]), batches, epochs * batches.per_epoch, x.shape[-1],
        Strategy.parse(ev.eval_aug), ev.eval_cutmix, lambda b: rng.key(key, "step", b), schedule="epoch",
        on_epoch=validate, lr=ev.eval_lr, weight_decay=ev.eval_wd, cutmix_p=ev.eval_cutmix_p, soft=soft)
    bar.close()
    if final is not None:
        final.append([p.detach() for p in model.parameters()])
    if trained is not None:
        trained.append(model.eval())
    return acc["last"], acc["best"]


def grouped_runs(ev: EvalConfig, device) -> bool:
    """Whether an evaluation's runs train together as one grouped model (--eval-group): only the instance-norm
    ConvNet groups (ConvNet.forward_stacked), and only several runs. '' (auto), by measurement
    (bench/eval_timing.py, bench/RESULTS.md): one by one on the CPU, where 5 grouped runs took 1.15x as long
    (grouped convolutions are slower there, as for the networks trained ahead); grouped on CUDA, one launch per
    layer for all runs (to be measured there: the GPU session runs eval_timing.py)."""
    if ev.eval_arch != "convnet" or ev.eval_runs < 2:
        return False
    return ev.eval_group == "on" or (ev.eval_group == "" and torch.device(device).type == "cuda")


def train_grouped(x, y, data, ev: EvalConfig, keys: list, progress: bool = False, desc: str = "", final: list = None):
    """The runs of train_once for `keys`, trained together: each run's network from its own keyed init, its
    own batch order, augmentation and CutMix (drawn as train_once draws them), through one grouped forward
    and backward per batch (ConvNet.forward_stacked) and one SGD step of all their parameters (sgd_, torch's
    SGD step); the same lr schedule. Returns [(last accuracy, best validation accuracy)] per run: train_once's,
    up to the order of floating-point sums (tests/engine/test_eval_group.py); each run's parameters are
    appended to `final` when given."""
    info, epochs, validations = data.info, ev.eval_epochs, ev.eval_validations
    nets = []
    for key in keys:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(rng.key(key, "init") & 0x7FFF_FFFF_FFFF_FFFF)
            nets.append(make_model(ev.eval_arch, info.num_classes, info.channels, info.size).to(x.device, x.dtype))
    template = nets[0].train()
    params = [torch.stack([list(n.parameters())[i].detach() for n in nets]).requires_grad_(True)
              for i in range(len(list(template.parameters())))]
    momentum = [torch.zeros_like(p) for p in params]
    batches = [EpochBatches(x.shape[0], ev.eval_batch, key, "batches", x.device) for key in keys]
    per_epoch, size, strategy = batches[0].per_epoch, x.shape[-1], Strategy.parse(ev.eval_aug)
    milestones = [2 * epochs // 3, 5 * epochs // 6]  # fit's MultiStepLR (gamma 0.2) at an epoch's end
    lr = ev.eval_lr
    val_every = max(1, epochs // max(1, validations))
    n_test = test_count(data, ev.eval_test_limit)
    last, best = [0.0] * len(keys), [0.0] * len(keys)
    bar = logs.bar(epochs, desc, progress, leave=False)
    for b in range(epochs * per_epoch):
        parts = []
        for key, batch in zip(keys, batches):
            idx, step_key = batch.indices(b), rng.key(key, "step", b)
            n = idx.shape[0]
            draw = (cutmix_draw(rng.key(step_key, "cutmix"), n, size, size, x.device, ev.eval_cutmix_p)
                    if ev.eval_cutmix else None)
            parts.append(batch_inputs(lambda pos, idx=idx: (x[idx[pos]], y[idx[pos]]),
                                      torch.arange(n, device=x.device), n, strategy, draw, step_key))
        out = template.forward_stacked(torch.stack([q[0] for q in parts]), params)
        loss = sum(batch_loss(out[k], *q[1:]) for k, q in enumerate(parts))
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            sgd_(params, grads, momentum, lr, 0.9, ev.eval_wd)
        if (b + 1) % per_epoch == 0:
            epoch = (b + 1) // per_epoch
            lr *= 0.2 ** milestones.count(epoch)
            bar.update(1)
            if (epoch % val_every == 0 and epoch // val_every <= validations) or epoch == epochs:
                for k in range(len(keys)):
                    last[k] = _stacked_accuracy(template, params, k, data, n_test)
                    best[k] = max(best[k], last[k])
                bar.set_postfix(acc=f"{statistics.fmean(last):.1f}")
    bar.close()
    if final is not None:
        final.extend([p[k].detach() for p in params] for k in range(len(keys)))
    return list(zip(last, best))


@torch.no_grad()
def _stacked_accuracy(template, params, k, data, n_test, batch=500):
    """Test accuracy (%) of run k of stacked parameters, as train.accuracy measures one network."""
    stacked = [p[k:k + 1] for p in params]
    correct = 0
    for i in range(0, n_test, batch):
        xb = normalize(data.test_images[i:min(i + batch, n_test)].float() / 255.0, data.mean, data.std)
        out = template.forward_stacked(xb.to(stacked[0].dtype).unsqueeze(0), stacked)[0]
        correct += (out.argmax(1) == data.test_labels[i:min(i + batch, n_test)]).sum().item()
    return 100.0 * correct / n_test


class RealImages:
    """The real training set as train_once reads a training set (x[idx], shape, device, dtype): rows normalized
    as they are drawn, never the whole set in float (CIFAR-10's would take 600 MB, an ImageNet subset's more
    than the machine has)."""

    dtype = torch.float32

    def __init__(self, data):
        self.data, self.device = data, data.device
        self.shape = tuple(data.images.shape)

    def __getitem__(self, idx):
        return normalize(self.data.to_float(idx), self.data.mean, self.data.std)


def train_and_test(x, y, data, ev: EvalConfig, seed: int = 0, progress: bool = True, soft=None) -> dict:
    """IDC's protocol as `ev` sets it (architecture, epochs, runs, augmentation, CutMix, batch,
    validations, test images) on a training set x [N, C, H, W] in [0, 1], y [N]; returns the results.
    soft: a train.SoftLabels, whose teacher labels every batch in place of y (runs one by one)."""
    return _train_and_test(normalize(x.to(data.device), data.mean, data.std), y.to(data.device), data, ev, seed,
                           progress, soft)


def train_and_test_real(data, ev: EvalConfig, seed: int = 0, progress: bool = True, trained: list = None) -> dict:
    """train_and_test on the whole real training set (the full-data reference, udd_fast/reference.py); each
    run's network is appended to `trained` where the runs train one by one."""
    return _train_and_test(RealImages(data), data.labels, data, ev, seed, progress, trained=trained)


def _train_and_test(x, y, data, ev: EvalConfig, seed: int, progress: bool, soft=None, trained=None) -> dict:
    arch, epochs, runs = ev.eval_arch, ev.eval_epochs, ev.eval_runs
    if runs < 1 or epochs < 1:
        raise ValueError(f"evaluation needs runs >= 1 and epochs >= 1 (got runs={runs}, epochs={epochs})")
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    t0 = time.time()
    keys = [rng.key(seed, "eval", arch, r) for r in range(runs)]
    grouped = soft is None and grouped_runs(ev, x.device)  # the grouped model has no teacher
    if grouped:
        last, best = map(list, zip(*train_grouped(x, y, data, ev, keys, progress, desc=f"eval {arch} {runs} runs")))
    else:
        last, best = [], []
        for r, key in enumerate(keys):
            a, b = train_once(x, y, data, ev, key, progress, desc=f"eval {arch} run {r + 1}/{runs}", soft=soft,
                              trained=trained)
            last.append(a)
            best.append(b)
    return {
        "arch": arch, "epochs": epochs, "runs": runs, "num_train": int(x.shape[0]),
        "accuracy_runs": last,
        "accuracy_mean": statistics.fmean(last),
        "accuracy_std": statistics.stdev(last) if runs > 1 else 0.0,
        "validations": ev.eval_validations,
        "num_test": test_count(data, ev.eval_test_limit),
        "best_runs": best,
        "best_mean": statistics.fmean(best),
        "eval_seconds": time.time() - t0,
        "augmentation": str(Strategy.parse(ev.eval_aug)), "cutmix": bool(ev.eval_cutmix),
        "batch": ev.eval_batch, "lr": ev.eval_lr, "weight_decay": ev.eval_wd, "cutmix_p": ev.eval_cutmix_p,
        "grouped": grouped, "labels": "hard" if soft is None else "soft",
    }


def accuracy_of(result, data, ev: EvalConfig, seed: int = 0, progress: bool = True, with_region_views=None,
                soft=None) -> dict:
    """IDC's protocol on a Result's training set (Result.training_set decides the region views:
    with_region_views None takes the run's setting); the results say whether views were used. soft: a
    train.SoftLabels in place of the set's labels."""
    views = result.uses_region_views(with_region_views)
    x, y = result.training_set(with_region_views=views, device=data.device)
    return {**train_and_test(x, y, data, ev, seed, progress, soft), "region_views": views}
