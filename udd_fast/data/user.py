"""User data: an .npz file or a folder of class subfolders of images. Without an explicit test split,
every 10th sample of each class (the 10th, 20th, ... in dataset order) is held out as the test split."""
import zipfile
from pathlib import Path

import numpy as np
import torch

from .dataset import ArrayDataset, DataError, DatasetInfo
from .source import DataSource
from .validate import as_int_labels, contiguous, validate_split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# what data without test images is told (it can be distilled, never evaluated)
NO_TEST_IMAGES = ("{name} has no test images (without a train/test split every 10th training image of each "
                  "class is held out, and no class has 10)")


def _holdout_mask(labels: np.ndarray) -> np.ndarray:
    """True for every 10th sample of each class (its 10th, 20th, ... in dataset order)."""
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels)
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - starts[labels[order]]
    return rank % 10 == 9


def _channel_stats(images: np.ndarray) -> tuple[tuple, tuple]:
    """Per-channel mean/std on the [0,1] scale, exact in float64 via a 256-bin histogram."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = np.bincount(images[:, c].ravel(), minlength=256).astype(np.float64)
        mean = (hist * values).sum() / hist.sum()
        var = (hist * (values - mean) ** 2).sum() / hist.sum()
        means.append(float(mean))
        stds.append(float(np.sqrt(var)))
    return tuple(means), tuple(stds)


def _user_dataset(source: DataSource, where: str, train: tuple, test: tuple | None, class_names) -> ArrayDataset:
    """Validate user arrays, hold out a test split if none is given, compute stats."""
    train_images, train_labels = train
    if train_labels.size and train_labels.min() < 0:
        raise DataError(f"{where}: labels must be 0..K-1, found {train_labels.min()}")
    if class_names is None and train_labels.size and int(train_labels.max()) >= len(train_labels):
        # every class 0..max must hold a training image: a larger label is a broken file, and counting up to
        # it would ask for memory without bound (a label of 2**40 is 8 TiB of counts)
        raise DataError(f"{where}: labels reach {int(train_labels.max())} but there are only {len(train_labels)} "
                        f"training images; labels must be 0..K-1 with every class present")
    num_classes = len(class_names) if class_names is not None else int(train_labels.max(initial=-1)) + 1
    if num_classes == 0:
        raise DataError(f"{where}: no training samples")
    if num_classes == 1:  # one class: every prediction is right, any accuracy would be meaningless
        raise DataError(f"{where}: one class found ({(class_names or ['0'])[0]!r}); distillation and its "
                        f"evaluation need at least 2 classes")
    channels, size = train_images.shape[1], train_images.shape[2]
    check = dict(channels=channels, size=size, num_classes=num_classes)
    validate_split(train_images, train_labels, where=where, require_all_classes=True, **check)
    if test is None:
        held = _holdout_mask(train_labels)
        test = (train_images[held], train_labels[held])
        train = (train_images[~held], train_labels[~held])
    else:
        validate_split(*test, where=where + " (test split)", **check)
    names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(num_classes))
    mean, std = _channel_stats(train[0])
    info = DatasetInfo(name=str(source), channels=channels, size=size, num_classes=num_classes,
                       mean=mean, std=std, class_names=names, size_base=32)
    return ArrayDataset(info, *contiguous(*train), *contiguous(*test))


def _user_images(arr: np.ndarray, where: str) -> np.ndarray:
    """uint8 or [0,1]-float images as (N,H,W), (N,H,W,C) or (N,C,H,W) -> uint8 (N,C,H,W) (see nchw)."""
    if arr.dtype.kind == "f":
        if arr.size and not (np.all(np.isfinite(arr)) and arr.min() >= 0.0 and arr.max() <= 1.0):
            raise DataError(f"{where}: float images must lie in [0, 1]")
        arr = np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8 or float in [0, 1], found {arr.dtype}")
    return nchw(arr, where)


def nchw(arr: np.ndarray, where: str) -> np.ndarray:
    """Square images as (N,H,W), (N,H,W,C) or (N,C,H,W) -> (N,C,H,W), C in {1, 3}. A 4-D array is NCHW
    when axis 1 is 1 or 3 and axes 2, 3 are equal; else NHWC when axis 3 is 1 or 3 and axes 1, 2 are
    equal (NCHW wins if both fit)."""
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        _, a, b, c = arr.shape
        if a in (1, 3) and b == c:
            pass
        elif c in (1, 3) and a == b:
            arr = arr.transpose(0, 3, 1, 2)
        else:
            raise DataError(f"{where}: cannot read shape {arr.shape} as square (N,C,H,W) or "
                            "(N,H,W,C) images with C in {1, 3}")
    else:
        raise DataError(f"{where}: images must be (N,H,W), (N,H,W,C) or (N,C,H,W), found {arr.shape}")
    if arr.shape[2] != arr.shape[3]:
        raise DataError(f"{where}: images must be square, found {arr.shape[2]}x{arr.shape[3]}")
    return np.ascontiguousarray(arr)


def load_npz(path: Path) -> ArrayDataset:
    """User data in one .npz: 'images', 'labels' (0..K-1, every class present), optional
    'test_images'/'test_labels' and 'class_names'. Without a test split, every 10th
    sample of each class is held out as test."""
    if not zipfile.is_zipfile(path):  # np.load would call any other file "pickled data"
        raise DataError(f"{path}: not an .npz file (an .npz is a zip archive of .npy arrays, as numpy.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zip/format errors come in many types
        raise DataError(f"{path}: cannot read .npz ({type(exc).__name__}: {exc})") from exc
    for key in ("images", "labels"):
        if key not in arrays:
            raise DataError(f"{path}: missing array {key!r} (found {sorted(arrays)})")
    names = arrays["class_names"].tolist() if "class_names" in arrays else None
    return _arrays_dataset(arrays["images"], arrays["labels"], arrays.get("test_images"), arrays.get("test_labels"),
                           names, DataSource("npz", str(path)), str(path))


def from_arrays(images, labels, test_images=None, test_labels=None, class_names=None, *, name="") -> ArrayDataset:
    """User data from arrays (numpy or torch): images uint8 or float in [0,1] as (N,H,W), (N,H,W,C) or
    (N,C,H,W), labels 0..K-1 (every class present); without a test split every 10th sample of each
    class is held out as test. `name` (optional) names the data: its source is then arrays:<name>."""
    source = DataSource("arrays", name)
    return _arrays_dataset(images, labels, test_images, test_labels, class_names, source, str(source))


def _arrays_dataset(images, labels, test_images, test_labels, class_names, source: DataSource,
                    where: str) -> ArrayDataset:
    """from_arrays for any source; `where` names it in errors."""
    def arr(a, name):
        """A numpy array of a numpy or torch array: a tensor with no data (meta) is refused, half precision
        widened to float32 (numpy has no bfloat16)."""
        if not hasattr(a, "detach"):
            try:
                return np.asarray(a)
            except Exception as e:  # ragged lists and the like
                raise DataError(f"{where}[{name!r}]: not an array ({type(e).__name__}: {e})") from None
        if a.device.type == "meta":
            raise DataError(f"{where}[{name!r}]: a tensor on the meta device holds no data")
        a = a.detach().cpu()
        if a.dtype in (torch.float16, torch.bfloat16):
            a = a.float()
        try:
            return a.numpy()
        except (TypeError, RuntimeError) as e:
            raise DataError(f"{where}[{name!r}]: a {a.dtype} tensor cannot be read as an array ({e})") from None

    if (test_images is None) != (test_labels is None):
        raise DataError(f"{where}: give both 'test_images' and 'test_labels' or neither")
    train = (_user_images(arr(images, "images"), f"{where}['images']"),
             as_int_labels(arr(labels, "labels"), f"{where}['labels']"))
    test = None
    if test_images is not None:
        test = (_user_images(arr(test_images, "test_images"), f"{where}['test_images']"),
                as_int_labels(arr(test_labels, "test_labels"), f"{where}['test_labels']"))
    names = None if class_names is None else [str(n) for n in class_names]
    return _user_dataset(source, where, train, test, names)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def read_class_folders(root: Path):
    """An image folder root/<class>/*.png|jpg|jpeg: (uint8 images (N,C,S,S), labels, the sorted class
    folder names the labels index)."""
    classes, files, labels = _scan_tree(root, None)
    if not files:
        raise DataError(f"{root}: no .png/.jpg/.jpeg images in its class folders")
    return _read_image_files(files), labels, classes


def _scan_tree(root: Path, classes: list[str] | None):
    """Files and labels under root/<class>/; classes default to the sorted subfolders."""
    dirs = _class_dirs(root)
    if classes is None:
        classes = [d.name for d in dirs]
        if not classes:
            raise DataError(f"{root}: no class subfolders found (expected {root}/<class>/*.png)")
    files, labels = [], []
    for d in dirs:
        if d.name not in classes:
            raise DataError(f"{d}: class folder not present in the training split")
        found = _image_files(d)
        files += found
        labels += [classes.index(d.name)] * len(found)
    return classes, files, np.asarray(labels, dtype=np.int64)


def _image_header(path: Path, image_module):
    try:
        with image_module.open(path) as im:
            return im.mode, im.size
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError...
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from exc


# Grayscale modes (1 channel); "I" is how some Pillow versions open 16-bit PNGs.
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N")


def _image_array(im, path: Path, gray: bool) -> np.ndarray:
    """One image as uint8 (H, W) when `gray`, else (H, W, 3): 16-bit values scaled to 8 bits
    (round(v * 255 / 65535)), alpha accepted only where every pixel is opaque; never clipped."""
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")  # the palette's colours and its transparency
    if im.mode in ("LA", "La", "RGBA", "RGBa"):
        alpha = np.asarray(im.getchannel("A"))
        if alpha.size and alpha.min() < 255:
            raise DataError(f"{path}: has transparent pixels (alpha down to {alpha.min()}); their colours are "
                            "undefined: flatten it onto a background (or save it without alpha) first")
        im = im.convert("L" if im.mode in ("LA", "La") else "RGB")
    if im.mode.startswith("I"):
        arr = np.asarray(im).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DataError(f"{path}: {im.mode} pixel values in [{arr.min()}, {arr.max()}] are not 8- or 16-bit "
                            "grey levels; save it as an 8- or 16-bit PNG")
        arr = ((arr * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535), exactly
    elif im.mode == "F":
        raise DataError(f"{path}: floating-point pixels (mode F) have no fixed range; save it as an 8- or "
                        "16-bit PNG")
    else:
        arr = np.asarray(im.convert("L" if im.mode in _GRAY_MODES else "RGB"))
    if gray:
        return arr
    return np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr


def _read_image_files(files: list[Path]) -> np.ndarray:
    """Read images to uint8 (N,C,S,S): all grayscale -> 1 channel, else RGB. Sizes must match."""
    from PIL import Image

    headers = [_image_header(f, Image) for f in files]
    ref_w, ref_h = headers[0][1]
    if ref_w != ref_h:
        raise DataError(f"{files[0]}: images must be square, found {ref_w}x{ref_h}")
    for f, (_, size) in zip(files, headers):
        if size != (ref_w, ref_h):
            raise DataError(f"{f}: size {size[0]}x{size[1]} differs from {ref_w}x{ref_h} of {files[0]}; "
                            "all images must have the same square size")
    gray = all(mode in _GRAY_MODES for mode, _ in headers)
    out = np.empty((len(files), 1 if gray else 3, ref_h, ref_w), dtype=np.uint8)
    for i, f in enumerate(files):  # file decoding is inherently per file
        try:
            with Image.open(f) as im:
                im.load()
                arr = _image_array(im, f, gray)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{f}: unreadable image ({type(exc).__name__}: {exc})") from exc
        out[i] = arr[None] if gray else arr.transpose(2, 0, 1)
    return out


def load_folder(root: Path) -> ArrayDataset:
    """User data as image folders: root/<class>/*.png|jpg|jpeg, or root/train/<class>/...
    plus root/test/<class>/... . Classes are the sorted folder names; files are sorted.
    Without train/test, every 10th image of each class is held out as test."""
    split = (root / "train").is_dir() and (root / "test").is_dir()
    if split:
        classes, train_files, train_labels = _scan_tree(root / "train", None)
        _, test_files, test_labels = _scan_tree(root / "test", classes)
    else:
        classes, train_files, train_labels = _scan_tree(root, None)
        test_files, test_labels = [], np.zeros(0, dtype=np.int64)
    for c, name in enumerate(classes):
        if not np.any(train_labels == c):
            raise DataError(f"{root}: class folder {name!r} has no .png/.jpg/.jpeg images")
    images = _read_image_files(train_files + test_files)
    train = (images[: len(train_files)], train_labels)
    test = (images[len(train_files):], test_labels) if split else None
    return _user_dataset(DataSource("folder", str(root)), str(root), train, test, classes)
