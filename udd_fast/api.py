"""The Python API, for notebooks and pipelines (imported as `udd_fast.distill_dataset`,
`udd_fast.evaluate_distilled`, `udd_fast.Result`). The command lines are thin layers over it:
`python -m udd_fast.distill` parses its flags into the same settings and runs the same phases
(udd_fast.pipeline), `python -m udd_fast.evaluate` calls evaluate_distilled.

    import udd_fast
    res = udd_fast.distill_dataset("mnist", ipc=1, method="udd", preset="quick")
    res.summary["accuracy_mean"], res.images.shape, res.training_set()[0].shape
    res.save("runs/mnist-udd")
    udd_fast.evaluate_distilled("runs/mnist-udd", runs=2)

Settings are the command line's options as keyword arguments (`--eval-epochs 10` is
`eval_epochs=10`, on/off options take True/False); errors are exceptions (UsageError, DataError,
ArtifactError) with the command line's messages.
"""
import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

from .artifacts import ArtifactError, load_distilled
from .data import ArrayDataset, DataError, RealData, from_arrays, load_dataset
from .distributed import Comm
from .pipeline import (Request, UsageError, check_settings, dataset_arg, execute, option_defaults, option_settings,
                       prepare)
from .result import Result


def _spell(name, value=None):
    return f"{name}=" + ("" if value is None else repr(value))


def distill_dataset(data, labels=None, *, test_images=None, test_labels=None, class_names=None, out=None,
                    force=False, data_dir=None, download=True, progress=True, **settings) -> Result:
    """Distill, evaluate and return the Result.

    data: a built-in dataset's name ("mnist", "cifar10", ...), the path of an .npz file or an image
      folder, or images in memory (numpy or torch; uint8 or float in [0,1]; (N,H,W), (N,H,W,C) or
      (N,C,H,W)) with `labels` 0..K-1 and optionally a test split and class names (without a test
      split every 10th image of each class is held out).
    out: the run directory to write (checkpoints, log.txt and the artifacts, like the command line);
      None runs in a temporary directory that is removed afterwards (save the Result to keep it).
    settings: ipc, method, preset, seed, device, factor, iterations, eval_runs, eval_every, policy, ...
    """
    known = {f.name for f in option_settings()}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"unknown setting {unknown[0]!r}; the settings are {', '.join(sorted(known))}")
    values = {**option_defaults(), **settings}
    check_settings(values, set(settings), _spell)
    if isinstance(data, (str, Path)):
        if labels is not None or test_images is not None or class_names is not None:
            raise UsageError("labels, test_images and class_names go with images in memory, not a dataset name")
        dataset = dataset_arg(str(data))
    else:
        if labels is None:
            raise UsageError("images in memory need their labels (distill_dataset(images, labels, ...))")
        dataset = from_arrays(data, labels, test_images, test_labels, class_names)
    with tempfile.TemporaryDirectory(prefix="udd_fast-") as tmp:
        where = Path(out).absolute() if out is not None else Path(tmp) / "run"
        req = Request(dataset, where, values, data_dir, download=download, force=force, progress=progress)
        return execute(prepare(req, Comm()))


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
    from .evaluate import check_run_dir, check_same_data, evaluate_set, saved_regions

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


__all__ = ["distill_dataset", "evaluate_distilled", "Result", "ArtifactError", "DataError", "UsageError"]
