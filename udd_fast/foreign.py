"""Distilled sets saved by other tools, read into a Result, so that `python -m udd_fast.evaluate` runs its one
protocol on any of them. The formats, as those projects' code saves them:

- `udd_fast`: a run directory or its distilled.pt (Result.load);
- `idc`: IDC's data.pt, `[images, labels]` (its condense.py), images normalized with IDC's statistics (the
  ones udd_fast uses); they are stored multi-formation images, and the file does not say the factor:
  `--factor` is required;
- `dc`: DC/DSA/DM's `res_<method>_<dataset>_<model>_<ipc>ipc.pt`, `{'data': [[images, labels] per
  experiment], 'accs_all_exps': {model: [accuracies]}}` (their main.py and main_DM.py), images normalized
  with their statistics (DC_STATS); `--experiment` picks one (default the last);
- `mtt`: a directory holding `images_best.pt` and `labels_best.pt` (MTT's distill.py), normalized with its
  statistics (MTT_STATS), or ZCA-whitened: its files do not say which, so `--zca on|off` is required, and
  whitened sets are refused (their evaluation needs the test images whitened alike: not built);
- `npz`: arrays `images` and `labels`, uint8 or float in [0, 1], (N,C,H,W) or (N,H,W,C);
- `folder`: an image folder `<class>/<image>`, the class folders named by the dataset's class names or by
  class indices.

Every file is read with torch.load(weights_only=True) (or numpy without pickle): tensors and plain
containers only; DC's accuracies are numpy scalars, whose reconstruction is allowed and nothing else.
Normalized sets are un-normalized with their tool's statistics; the protocol then normalizes them with the
dataset's, as it does the test images. Values outside [0, 1] after that are clamped by the protocol (IDC's
evaluation clamps its own sets): the share of them is reported.
"""
import zipfile
from pathlib import Path

import numpy as np
import torch

from .artifacts import ArtifactError, read_tensors
from .config import UsageError, build_config
from .data import nchw, read_class_folders
from .result import Result

FORMATS = ("udd_fast", "idc", "dc", "mtt", "npz", "folder")

CIFAR = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# DC/DSA/DM's get_dataset (VICO-UoE/DatasetCondensation utils.py; CIFAR-100's own statistics since 2022, CIFAR-10's
# before) and MTT's (its utils.py: CIFAR-10's for CIFAR-100), by udd_fast's dataset names
DC_STATS = {"mnist": ((0.1307,), (0.3081,)), "fashionmnist": ((0.2861,), (0.3530,)),
            "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)), "cifar10": CIFAR,
            "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)), "tinyimagenet": IMAGENET}
MTT_STATS = {"cifar10": CIFAR, "cifar100": CIFAR, "tinyimagenet": IMAGENET}
MTT_FILES = ("images_best.pt", "labels_best.pt")


def _numpy_scalars():
    """The globals a pickled numpy scalar needs (DC's accuracies): its reconstructor and dtypes."""
    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    return [core.multiarray.scalar, np.dtype, *dtypes]


def _load(path: Path, fmt: str):
    return read_tensors(path, f"{fmt} set", allow=_numpy_scalars(), ours=False)


def detect(path) -> str:
    """The format of `path`, from its layout and, for a .pt file, its contents (loaded safely)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} does not exist (a distilled set: a file, or a directory holding one)")
    if path.is_dir():
        if (path / "distilled.pt").exists():
            return "udd_fast"
        if all((path / f).exists() for f in MTT_FILES):
            return "mtt"
        if any(p.is_dir() for p in path.iterdir() if not p.name.startswith(".")):
            return "folder"
        raise ArtifactError(f"{path}: no distilled set found (a udd_fast run holds distilled.pt, an MTT run "
                            f"{' and '.join(MTT_FILES)}, an image folder <class>/<image> files): pass the file itself")
    if path.name in MTT_FILES:
        return "mtt"
    if zipfile.is_zipfile(path) and path.suffix == ".npz":
        return "npz"
    obj = _load(path, "distilled")
    if isinstance(obj, dict) and "images" in obj and "config" in obj:
        return "udd_fast"
    if isinstance(obj, dict) and "data" in obj and "accs_all_exps" in obj:
        return "dc"
    if isinstance(obj, (list, tuple)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj):
        return "idc"
    raise ArtifactError(f"{path}: not a distilled set of a known format ({', '.join(FORMATS)}); pass --format "
                        f"if it is one of them")


def _pair(images, labels, where: str):
    """(images float [N, C, H, W], labels int64 [N]) checked as a set's tensors."""
    if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)):
        raise ArtifactError(f"{where}: expected an images tensor and a labels tensor, found "
                            f"{type(images).__name__} and {type(labels).__name__}")
    if labels.dim() == 2 and labels.is_floating_point():
        raise ArtifactError(f"{where}: soft labels ({tuple(labels.shape)}) are not evaluated yet: udd_fast evaluates "
                            f"with hard labels (a class index per image)")
    if images.dim() != 4 or labels.dim() != 1 or images.shape[0] != labels.shape[0] or not len(labels):
        raise ArtifactError(f"{where}: expected images [N, C, H, W] and labels [N], found {tuple(images.shape)} "
                            f"and {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ArtifactError(f"{where}: labels must be class indices (integers), found {labels.dtype}")
    if not images.is_floating_point() and images.dtype != torch.uint8:
        raise ArtifactError(f"{where}: images must be float or uint8, found {images.dtype}")
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if not torch.isfinite(images).all():
        raise ArtifactError(f"{where}: the images hold NaN or infinite values")
    return images, labels.long()


def _unnormalize(images, stats):
    mean, std = stats
    shape = (1, len(mean), 1, 1)
    return images * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)


def _stats(table: dict, tool: str, info, where: str):
    if info.name not in table:
        raise UsageError(f"{where}: {tool}'s statistics for {info.name} are not known to udd_fast (it knows "
                         f"{', '.join(sorted(table))}); pass --dataset as one of those")
    return table[info.name]


def _read_npz(path: Path):
    if not zipfile.is_zipfile(path):
        raise ArtifactError(f"{path}: not an .npz file (a zip archive of .npy arrays, as numpy.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise ArtifactError(f"{path}: cannot read .npz ({type(e).__name__}: {e})") from None
    for key in ("images", "labels"):
        if key not in arrays:
            raise ArtifactError(f"{path}: missing array {key!r} (found {sorted(arrays)})")
    images = arrays["images"]
    if images.dtype.kind == "f" and images.size and (images.min() < 0.0 or images.max() > 1.0):
        raise ArtifactError(f"{path}: float images must lie in [0, 1] (found [{images.min():.3g}, {images.max():.3g}]): "
                            f"un-normalize them first")
    try:
        images = nchw(images, str(path))
    except Exception as e:
        raise ArtifactError(str(e)) from None
    if not np.issubdtype(arrays["labels"].dtype, np.integer):
        raise ArtifactError(f"{path}: labels must be integers, found {arrays['labels'].dtype}")
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(arrays["labels"].astype(np.int64))


def _read_folder(path: Path, info):
    try:
        images, labels, classes = read_class_folders(path)
    except Exception as e:
        raise ArtifactError(str(e)) from None
    names = list(info.class_names)
    index = {}
    for c in classes:
        if c in names:
            index[c] = names.index(c)
        elif c.isdigit() and int(c) < info.num_classes:
            index[c] = int(c)
        else:
            raise ArtifactError(f"{path / c}: class folder {c!r} is neither a class of {info.name} "
                                f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}) nor a class index "
                                f"below {info.num_classes}")
    mapped = torch.tensor([index[c] for c in classes])[torch.from_numpy(labels)]
    return torch.from_numpy(images), mapped


def read_set(path, info, fmt: str = None, factor: int = None, experiment: int = None, zca: str = None):
    """(Result, notes) of the distilled set at `path` (format `fmt`, detected when None) for the data described
    by `info` (a DatasetInfo: the images' channels and side, the class count). Raises UsageError for a flag the
    format needs (or does not take), ArtifactError for a file that is not such a set or does not fit the data."""
    path = Path(path)
    fmt = fmt or detect(path)
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: one of {', '.join(FORMATS)}")
    if fmt == "udd_fast":
        raise UsageError("a udd_fast run is read by Result.load")
    for flag, value, owner in (("--factor", factor, "idc"), ("--experiment", experiment, "dc"), ("--zca", zca, "mtt")):
        if value is not None and fmt != owner:
            raise UsageError(f"{flag} applies to the {owner} format; {path} is read as {fmt}")
    notes, stored_factor, stats = [], 1, None  # stats: the tool's normalization, where it stores normalized sets
    if fmt == "idc":
        if factor is None:
            raise UsageError(f"{path}: IDC's data.pt does not record its factor (the formations per side of each "
                             f"stored image): pass --factor, IDC's --factor of that run (its default is 2)")
        if factor < 1:
            raise UsageError(f"--factor must be >= 1 (got {factor})")
        obj = _load(path, "IDC")
        if not (isinstance(obj, (list, tuple)) and len(obj) == 2):
            raise ArtifactError(f"{path}: not IDC's data.pt (expected [images, labels], found {type(obj).__name__})")
        images, labels = _pair(*obj, str(path))
        stats, stored_factor = (info.mean, info.std), factor
    elif fmt == "dc":
        obj = _load(path, "DC/DSA/DM")
        runs = obj.get("data") if isinstance(obj, dict) else None
        if not isinstance(runs, (list, tuple)) or not runs:
            raise ArtifactError(f"{path}: not a DC/DSA/DM result (expected {{'data': [[images, labels], ...], "
                                f"'accs_all_exps': ...}})")
        k = len(runs) - 1 if experiment is None else experiment
        if not 0 <= k < len(runs):
            raise UsageError(f"--experiment {experiment}: {path} holds experiments 0 to {len(runs) - 1}")
        run = runs[k]
        if not (isinstance(run, (list, tuple)) and len(run) == 2):
            raise ArtifactError(f"{path}: experiment {k} is not [images, labels]")
        images, labels = _pair(*run, f"{path} (experiment {k})")
        stats = _stats(DC_STATS, "DC/DSA/DM", info, str(path))
        notes.append(f"experiment {k} of {len(runs)}")
    elif fmt == "mtt":
        where = path if path.is_dir() else path.parent
        if zca not in ("on", "off"):
            raise UsageError(f"{where}: MTT's files do not say whether the set was distilled with ZCA whitening "
                             f"(MTT's --zca, which its CIFAR scripts use): pass --zca on or --zca off")
        if zca == "on":
            raise UsageError(f"{where}: ZCA-whitened sets are not evaluated yet (the test images would need the same "
                             f"whitening, fitted on the training set as MTT fits it)")
        missing = [f for f in MTT_FILES if not (where / f).exists()]
        if missing:
            raise ArtifactError(f"{where}: an MTT set needs {' and '.join(MTT_FILES)}; missing {', '.join(missing)}")
        images, labels = _pair(_load(where / MTT_FILES[0], "MTT"), _load(where / MTT_FILES[1], "MTT"), str(where))
        stats = _stats(MTT_STATS, "MTT", info, str(where))
    elif fmt == "npz":
        images, labels = _pair(*_read_npz(path), str(path))
    else:
        if not path.is_dir():
            raise ArtifactError(f"{path}: an image folder set is a directory of class folders")
        images, labels = _pair(*_read_folder(path, info), str(path))
    _check_fits(images, labels, info, path)
    if stats is not None:
        images = _unnormalize(images, stats)
    outside = float(((images < 0) | (images > 1)).float().mean())
    if outside > 0:
        notes.append(f"{outside:.1%} of the pixel values lie outside [0, 1] and are clamped, as IDC's protocol clamps")
    k = info.num_classes
    ipc = max(1, round(labels.shape[0] / k))
    config = build_config(info.name, ipc, "paper", info.size, info.size_base, num_classes=k, factor=stored_factor)
    result = Result(images, labels, stored_factor, None, info, config,
                    summary={"format": fmt, "source": str(path), "notes": notes})
    return result, notes


def _check_fits(images, labels, info, path):
    c, h, w = images.shape[1:]
    if (c, h, w) != (info.channels, info.size, info.size):
        raise ArtifactError(f"{path}: images of {c}x{h}x{w}, {info.name} has {info.channels}x{info.size}x{info.size}: "
                            f"pass the --dataset it was distilled on")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= info.num_classes:
        raise ArtifactError(f"{path}: labels in [{lo}, {hi}], {info.name} has {info.num_classes} classes: pass the "
                            f"--dataset it was distilled on")
