"""IDC's evaluation protocol, and `python -m udd_fast.evaluate DIR_OR_FILE`.

Decode the stored images (formations), train a fresh network from scratch on them (SGD 0.01,
momentum 0.9, wd 5e-4, batch 64, lr x0.2 at 2/3 and 5/6 of the epochs, per-sample augmentation,
CutMix p 0.5), test on the real test set. IDC validates 4 times and logs best and last; we report
the last-epoch accuracy as mean +- std over runs, with best-of-4 beside it.

The evaluation augmentation follows IDC's code: its `dsa_strategy` (flip dropped for SVHN and MNIST),
without cutout whenever CutMix is on (IDC's `remove_aug(args.dsa_strategy, 'cutout')` under its
default `--mixup cut`); cutout stays only where CutMix is off (SVHN at factor 1 and IPC 1).
"""
import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import rng
from .artifacts import load_distilled
from .augment import Strategy
from .config import EvalConfig, UsageError
from .data import ArrayDataset, RealData, load_dataset
from .decode import training_set
from .models import ARCHS, make_model
from .result import Result
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
    bar = tqdm(total=epochs, desc=desc, leave=False, disable=not progress, mininterval=1.0)

    def validate(epoch):
        bar.update(1)
        if (epoch % val_every == 0 and epoch // val_every <= validations) or epoch == epochs:
            acc["last"] = accuracy(model, data.test_images[:n_test], data.test_labels[:n_test], data.mean, data.std)
            acc["best"] = max(acc["best"], acc["last"])
            bar.set_postfix(acc=f"{acc['last']:.1f}")

    fit(model, lambda idx: (x[idx], y[idx]), batches, epochs * batches.per_epoch, x.shape[-1],
        Strategy.parse(ev.eval_aug), ev.eval_cutmix, lambda b: rng.key(key, "step", b), schedule="epoch",
        on_epoch=validate)
    bar.close()
    return acc["last"], acc["best"]


def evaluate_set(images, labels, factor: int, data, ev: EvalConfig, seed: int = 0, progress: bool = True,
                 regions=None):
    """Evaluate stored images in [0,1] with IDC's protocol as `ev` sets it (architecture, epochs, runs,
    augmentation, CutMix, batch, validations, test images); returns a dict of the results.
    `regions` = (source index [M], box [M, 4]) adds UDD's region views to the decoded formations."""
    arch, epochs, runs = ev.eval_arch, ev.eval_epochs, ev.eval_runs
    if runs < 1 or epochs < 1:
        raise ValueError(f"evaluation needs runs >= 1 and epochs >= 1 (got runs={runs}, epochs={epochs})")
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    x, y = training_set(images.to(data.images.device), labels.to(data.images.device), factor, regions)
    x = normalize(x, data.mean, data.std)
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
        "region_views": regions is not None,
    }


def evaluate_distilled(source, *, data=None, data_dir=None, download=True, arch=None, runs=None, epochs=None,
                       seed=None, region_views=None, device="cpu", progress=True, allow_data_mismatch=False,
                       allow_incomplete=False) -> dict:
    """Evaluate a distilled set with IDC's protocol; returns the results (accuracy per run, mean, std,
    ...; "warnings" lists what was allowed).

    source: a Result, a run directory holding distilled.pt, or the file itself.
    data: the data to test on (a dataset name, an .npz or folder path, or an ArrayDataset from
      udd_fast.data.from_arrays); default: the set's own, read from `data_dir` (default: the run's).
    arch, runs, epochs, seed, region_views: default the run's own settings.
    """
    for name, v in (("runs", runs), ("epochs", epochs)):
        if v is not None and v < 1:
            raise UsageError(f"{name} must be >= 1 (got {v})")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} was asked for, but this torch build sees no CUDA device")
    warnings = []
    if isinstance(source, Result):
        saved = {"images": source.images, "labels": source.labels, "factor": source.factor,
                 "dataset": source.info.name, "config": source.config, "data": source.facts,
                 "data_dir": source.data_dir, "region_src": None, "boxes": None,
                 "dataset_info": {"num_classes": source.info.num_classes, "class_names": list(source.class_names)}}
        if source.regions is not None:
            saved["region_src"], saved["boxes"] = source.regions
        where = f"the Result of {source.info.name}"
    else:
        saved = load_distilled(source)
        check_run_dir(Path(source), allow_incomplete, warnings)
        where = str(source)
    cfg = saved["config"]
    runs = cfg.eval.eval_runs if runs is None else runs
    if runs < 1:
        raise UsageError(f"the run's config asks for {runs} evaluation runs: pass runs=N (--eval-runs N on the "
                         f"command line), N >= 1")
    regions = saved_regions(saved, cfg, None if region_views is None else ("on" if region_views else "off"))
    if isinstance(data, ArrayDataset):
        ds = data
    else:
        name = data if data is not None else saved["dataset"]
        if name == "arrays":
            raise UsageError(f"{where} was distilled from images in memory: pass them as data "
                             f"(udd_fast.data.from_arrays(images, labels, test_images, test_labels))")
        if name.startswith(("npz:", "folder:")):
            name = name.split(":", 1)[1]
        ds = load_dataset(name, data_dir if data_dir is not None else saved.get("data_dir"), download=download)
    real = RealData(ds, device)
    check_same_data(saved, real, where, allow_data_mismatch, warnings)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    ev = dataclasses.replace(cfg.eval, eval_arch=arch or cfg.eval.eval_arch, eval_runs=runs,
                             eval_epochs=cfg.eval.eval_epochs if epochs is None else epochs)
    res = evaluate_set(saved["images"], saved["labels"], saved["factor"], real, ev,
                       cfg.run.seed if seed is None else seed, progress, regions)
    res["warnings"] = warnings
    return res


def _parser():
    p = argparse.ArgumentParser(prog="python -m udd_fast.evaluate",
                                description="Evaluate a saved distilled set with IDC's protocol.")
    p.add_argument("path", help="a run directory holding distilled.pt, or the file itself")
    p.add_argument("--arch", default="convnet", choices=ARCHS)
    p.add_argument("--eval-runs", type=int, default=None, help="default: the run's own setting")
    p.add_argument("--eval-epochs", type=int, default=None, help="default: the run's own setting")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--data-dir", default=None,
                   help="default: the run's own, else $UDD_FAST_DATA, else ~/.cache/udd_fast/data")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data")
    p.add_argument("--seed", type=int, default=None, help="default: the run's own seed")
    p.add_argument("--eval-region-views", default=None, choices=("on", "off"),
                   help="add the saved region views to the formations (default: the run's own setting)")
    p.add_argument("--allow-data-mismatch", action="store_true",
                   help="evaluate although the data differs from the data the set was distilled on (other "
                        "classes, samples or content); the result then carries a warning")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="evaluate the distilled.pt of a run directory marked INCOMPLETE (a stopped run)")
    p.add_argument("--no-progress", action="store_true")
    return p


def saved_regions(saved, cfg, flag):
    """The saved region views to evaluate with, per --eval-region-views (default: the run's setting)."""
    has = saved.get("boxes") is not None
    want = cfg.eval.eval_region_views if flag is None else flag == "on"
    if want and flag == "on" and not has:
        raise ValueError("--eval-region-views on: this set has no region boxes (it was not distilled with UDD regions)")
    return (saved["region_src"], saved["boxes"]) if (want and has) else None


def check_run_dir(path: Path, allow: bool, warnings: list):
    """A set inside a run directory marked INCOMPLETE may not match the rest of that run."""
    from .artifacts import INCOMPLETE, ArtifactError

    run_dir = path if path.is_dir() else path.parent
    if not (run_dir / INCOMPLETE).exists():
        return
    msg = (f"{run_dir} is marked incomplete ({run_dir / INCOMPLETE}): its run is still going or stopped before "
           f"writing all artifacts, so its distilled.pt may be missing, older than its checkpoint or without "
           f"summary.json")
    if not allow:
        raise ArtifactError(f"{msg}; resume the run (python -m udd_fast.distill --resume {run_dir}) or pass "
                            f"--allow-incomplete")
    warnings.append(msg)


def check_same_data(saved, data, path, allow: bool, warnings: list):
    """Refuse data other than the set was distilled on (classes, counts, content), unless allowed."""
    from .artifacts import ArtifactError
    from .data import data_facts, data_mismatch

    x = saved["images"]
    if data.info.channels != x.shape[1] or data.info.size != x.shape[-1]:  # cannot be overridden
        raise ArtifactError(f"{path}: images {tuple(x.shape[1:])} do not match "
                            f"{data.info.name} ({data.info.channels}x{data.info.size}x{data.info.size})")
    facts = data_facts(data)
    info = saved["dataset_info"]
    diff = data_mismatch({"num_classes": info["num_classes"], "class_names": list(info["class_names"]),
                          **(saved.get("data") or {})}, facts)
    if diff:
        msg = f"{path} was distilled on other data than {data.info.name} now holds: " + "; ".join(diff)
        if not allow:
            raise ArtifactError(f"{msg}; its labels would not mean the same classes (pass --allow-data-mismatch "
                                f"to evaluate anyway)")
        warnings.append(msg)
    elif saved.get("data") is None:
        warnings.append(f"{path} predates data fingerprints: only the class names and count were compared")


def main(argv=None):
    from .artifacts import ArtifactError, WriteError, write_json
    from .data import DataError

    args = _parser().parse_args(argv)
    try:
        for name in ("eval_runs", "eval_epochs"):
            v = getattr(args, name)
            if v is not None and v < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1 (got {v})")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for, but this torch build sees no CUDA device")
        res = evaluate_distilled(args.path, data_dir=args.data_dir, download=not args.no_download, arch=args.arch,
                                 runs=args.eval_runs, epochs=args.eval_epochs, seed=args.seed,
                                 region_views=None if args.eval_region_views is None else args.eval_region_views == "on",
                                 device=args.device, progress=not args.no_progress,
                                 allow_data_mismatch=args.allow_data_mismatch, allow_incomplete=args.allow_incomplete)
    except (DataError, ArtifactError, UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res["path"] = str(args.path)
    print(json.dumps(res, indent=2))
    out = Path(args.path)
    out_dir = out if out.is_dir() else out.parent
    print(f"{args.arch}: {res['accuracy_mean']:.2f} +- {res['accuracy_std']:.2f} % over {res['runs']} runs "
          f"(best of {res['validations']} tests {res['best_mean']:.2f})", file=sys.stderr)
    try:
        write_json(out_dir / f"eval_{args.arch}.json", res)
    except WriteError as e:
        print(f"error: {e}; the result is printed above", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
