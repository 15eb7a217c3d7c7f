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
from .train import accuracy, fit, normalize


def test_count(data, test_limit: int) -> int:
    """How many test images an evaluation uses: the first `test_limit` (0: all), at most all there are."""
    n = int(data.test_images.shape[0])
    return min(test_limit, n) if test_limit else n


def train_once(x, y, data, ev: EvalConfig, key: int, progress: bool = False, desc: str = ""):
    """Train a fresh ev.eval_arch on normalized x; test ev.eval_validations times, evenly spaced, the last
    at the final epoch (IDC: 4). Returns (last accuracy, best validation accuracy)."""
    info, epochs, validations = data.info, ev.eval_epochs, ev.eval_validations
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng.key(key, "init") & 0x7FFF_FFFF_FFFF_FFFF)
        model = make_model(ev.eval_arch, info.num_classes, info.channels, info.size)
    model = model.to(x.device).train()
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
        on_epoch=validate, lr=ev.eval_lr, weight_decay=ev.eval_wd, cutmix_p=ev.eval_cutmix_p)
    bar.close()
    return acc["last"], acc["best"]


def train_and_test(x, y, data, ev: EvalConfig, seed: int = 0, progress: bool = True) -> dict:
    """IDC's protocol as `ev` sets it (architecture, epochs, runs, augmentation, CutMix, batch,
    validations, test images) on a training set x [N, C, H, W] in [0, 1], y [N]; returns the results."""
    arch, epochs, runs = ev.eval_arch, ev.eval_epochs, ev.eval_runs
    if runs < 1 or epochs < 1:
        raise ValueError(f"evaluation needs runs >= 1 and epochs >= 1 (got runs={runs}, epochs={epochs})")
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    x = normalize(x.to(data.device), data.mean, data.std)
    y = y.to(data.device)
    t0 = time.time()
    last, best = [], []
    for r in range(runs):
        a, b = train_once(x, y, data, ev, rng.key(seed, "eval", arch, r), progress,
                          desc=f"eval {arch} run {r + 1}/{runs}")
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
    }


def accuracy_of(result, data, ev: EvalConfig, seed: int = 0, progress: bool = True, with_region_views=None) -> dict:
    """IDC's protocol on a Result's training set (Result.training_set decides the region views:
    with_region_views None takes the run's setting); the results say whether views were used."""
    views = result.uses_region_views(with_region_views)
    x, y = result.training_set(with_region_views=views, device=data.device)
    return {**train_and_test(x, y, data, ev, seed, progress), "region_views": views}
