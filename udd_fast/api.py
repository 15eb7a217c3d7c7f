"""The Python API, for notebooks and pipelines (imported as `udd_fast.distill_dataset`,
`udd_fast.evaluate_distilled`, `udd_fast.Result`). The command lines are thin layers over it:
`python -m udd_fast.distill` parses its flags into the same settings and runs the same phases
(udd_fast.pipeline), `python -m udd_fast.evaluate` calls evaluate_distilled.

    import udd_fast
    res = udd_fast.distill_dataset("mnist", ipc=1, method="udd", preset="quick")
    res.summary["accuracy_mean"], res.images.shape, res.training_set()[0].shape, res.region_views
    res.save("runs/mnist-udd")
    udd_fast.evaluate_distilled("runs/mnist-udd", runs=2)

Settings are the command line's options as keyword arguments (`--eval-epochs 10` is
`eval_epochs=10`, on/off options take True/False); errors are exceptions (UsageError, DataError,
ArtifactError) with the command line's messages.
"""
import contextlib
import tempfile
from pathlib import Path


from .artifacts import ArtifactError
from .config import UsageError, check_settings, option_defaults, option_settings
from .data import DataError, DataSource, from_arrays
from .distributed import Comm
from .evaluate import evaluate_distilled
from .pipeline import Request, execute, prepare
from .result import Result


def _spell(name, value=None):
    return f"{name}=" + ("" if value is None else repr(value))


def distill_dataset(data, labels=None, *, test_images=None, test_labels=None, class_names=None, out=None,
                    force=False, data_dir=None, download=True, progress=True, size=None, classes=None,
                    **settings) -> Result:
    """Distill, evaluate and return the Result.

    data: a built-in dataset's name ("mnist", "cifar10", ...), the path of an .npz file or an image
      folder, or images in memory (numpy or torch; uint8 or float in [0,1]; (N,H,W), (N,H,W,C) or
      (N,C,H,W)) with `labels` 0..K-1 and optionally a test split and class names (without a test
      split every 10th image of each class is held out). The JPEG sets: "tinyimagenet", "imagenet10",
      "imagenet100", or "imagenet" with `classes` (a file of wnids); `size` their side (--size).
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
    if values["method"] == "full":  # nothing to return: its run directory holds the accuracy alone
        raise UsageError("method='full' stores no set, and distill_dataset returns one: run `python -m "
                         "udd_fast.distill --method full` (its summary.json holds the accuracy) or call "
                         "udd_fast.reference.full_data_accuracy(data, eval_config, seed)")
    if isinstance(data, (str, Path)):
        if labels is not None or test_images is not None or class_names is not None:
            raise UsageError("labels, test_images and class_names go with images in memory, not a dataset name")
        dataset = DataSource.parse(data).with_options(size, classes)
    else:
        if size is not None or classes is not None:
            raise UsageError("size and classes go with a JPEG set's name (tinyimagenet, imagenet10, imagenet100, "
                             "imagenet), not with images in memory")
        if labels is None:
            raise UsageError("images in memory need their labels (distill_dataset(images, labels, ...))")
        dataset = from_arrays(data, labels, test_images, test_labels, class_names)
    scratch = tempfile.TemporaryDirectory(prefix="udd_fast-") if out is None else contextlib.nullcontext()
    with scratch as tmp:  # a temporary run directory only when no `out` is given
        where = Path(out).absolute() if out is not None else Path(tmp) / "run"
        req = Request(dataset, where, values, data_dir, download=download, force=force, progress=progress)
        return execute(prepare(req, Comm()))


__all__ = ["distill_dataset", "evaluate_distilled", "Result", "ArtifactError", "DataError", "UsageError"]
