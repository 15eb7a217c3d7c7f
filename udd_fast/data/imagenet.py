"""The JPEG sets: Tiny-ImageNet and ImageNet subsets, in their official layouts (registry.py's docstring),
decoded at a chosen side into the disk cache (image_cache.py) and returned memory-mapped.

- Tiny-ImageNet: the 200 classes of `wnids.txt`, in sorted order (as an ImageFolder over `train/` orders
  them, the order DC/DM/MTT use), named by `words.txt`; `val/` (labelled by `val/val_annotations.txt`) is
  the test split, as the other frameworks use it. Default side 64.
- ImageNet subsets: `train/<wnid>/` and `val/<wnid>/`, labels in the order of the class list. IDC's
  selections (its data.py `find_subclasses` with seed 0): ImageNet-100 is its misc/class100.txt in that
  file's order, ImageNet-10 its first 10 entries. Any other list: --dataset imagenet --classes FILE (one
  wnid per line). Default side 224, IDC's.
"""
from pathlib import Path

import numpy as np

from .dataset import ArrayDataset, DataError, DatasetInfo
from .image_cache import cached_splits
from .registry import DATASETS, IMAGENET_ANY

# IDC's misc/class100.txt (ImageNet wnids), in its order: ImageNet-100, and its first 10 ImageNet-10
IDC_CLASSES_100 = (
    "n02869837 n01749939 n02488291 n02107142 n13037406 n02091831 n04517823 n04589890 n03062245 n01773797 "
    "n01735189 n07831146 n07753275 n03085013 n04485082 n02105505 n01983481 n02788148 n03530642 n04435653 "
    "n02086910 n02859443 n13040303 n03594734 n02085620 n02099849 n01558993 n04493381 n02109047 n04111531 "
    "n02877765 n04429376 n02009229 n01978455 n02106550 n01820546 n01692333 n07714571 n02974003 n02114855 "
    "n03785016 n03764736 n03775546 n02087046 n07836838 n04099969 n04592741 n03891251 n02701002 n03379051 "
    "n02259212 n07715103 n03947888 n04026417 n02326432 n03637318 n01980166 n02113799 n02086240 n03903868 "
    "n02483362 n04127249 n02089973 n03017168 n02093428 n02804414 n02396427 n04418357 n02172182 n01729322 "
    "n02113978 n03787032 n02089867 n02119022 n03777754 n04238763 n02231487 n03032252 n02138441 n02104029 "
    "n03837869 n03494278 n04136333 n03794056 n03492542 n02018207 n04067472 n03930630 n03584829 n02123045 "
    "n04229816 n02100583 n03642806 n04336792 n03259280 n02116738 n02108089 n03424325 n01855672 n02090622"
).split()
IDC_SUBSETS = {"imagenet10": IDC_CLASSES_100[:10], "imagenet100": IDC_CLASSES_100}

# what torchvision's ImageFolder (IDC's reader) accepts as an image
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

TINY_LAYOUT = ("tiny-imagenet-200/wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
               "val/val_annotations.txt (the official tiny-imagenet-200.zip from "
               "http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzipped)")
IMAGENET_LAYOUT = ("imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*.JPEG (ImageNet's ILSVRC2012 train and "
                   "val images by class folder, as torchvision's ImageFolder reads them; a symbolic link named "
                   "imagenet to an existing copy will do)")


def _images_in(folder: Path) -> list:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _missing(what: Path, title: str, layout: str, data_dir: Path) -> DataError:
    return DataError(f"{title}: {what} not found. It is not downloaded (it needs a login): place it under the data "
                     f"directory {data_dir} (--data-dir or $UDD_FAST_DATA) as {layout}")


def read_class_list(path: Path) -> list:
    """wnids, one per line (blank lines and #-comments skipped), each once."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the class list ({type(exc).__name__}: {exc})") from exc
    classes = [line.split("#", 1)[0].strip() for line in lines]
    classes = [c for c in classes if c]
    seen = set()
    for c in classes:
        if c in seen:
            raise DataError(f"{path}: class {c!r} is listed twice")
        if any(ch in c for ch in "/\\") or c in (".", ".."):
            raise DataError(f"{path}: {c!r} is not a class folder name (one wnid per line, e.g. n01440764)")
        seen.add(c)
    if len(classes) < 2:
        raise DataError(f"{path}: {len(classes)} classes listed; distillation needs at least 2 (one wnid per line)")
    return classes


def tiny_imagenet_files(data_dir: Path) -> tuple:
    """(classes, class names, {'train': (files, labels), 'test': (...)}, root) of Tiny-ImageNet's layout."""
    root = data_dir / DATASETS["tinyimagenet"]["folder"]
    title = "Tiny-ImageNet"
    for need in (root / "wnids.txt", root / "train", root / "val" / "val_annotations.txt", root / "val" / "images"):
        if not need.exists():
            raise _missing(need, title, TINY_LAYOUT, data_dir)
    wnids = [w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()]
    classes = sorted(set(wnids))
    if len(classes) != len(wnids) or len(classes) < 2:
        raise DataError(f"{root / 'wnids.txt'}: expected distinct wnids, one per line ({len(wnids)} read, "
                        f"{len(classes)} distinct)")
    words = {}
    if (root / "words.txt").is_file():
        for line in (root / "words.txt").read_text(errors="replace").splitlines():
            wnid, _, name = line.partition("\t")
            words[wnid.strip()] = name.strip()
    index = {w: i for i, w in enumerate(classes)}
    train_files, train_labels = [], []
    for w in classes:
        folder = root / "train" / w / "images"
        found = _images_in(folder) if folder.is_dir() else []
        if not found:
            raise DataError(f"{folder}: no training images of class {w} (Tiny-ImageNet's layout: {TINY_LAYOUT})")
        train_files += found
        train_labels += [index[w]] * len(found)
    test_files, test_labels = [], []
    ann = root / "val" / "val_annotations.txt"
    for n, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1].strip() not in index:
            raise DataError(f"{ann}, line {n}: expected '<file>\\t<wnid>\\t...' with a wnid of wnids.txt, "
                            f"found {line[:80]!r}")
        path = root / "val" / "images" / parts[0].strip()
        if not path.is_file():
            raise DataError(f"{ann}, line {n}: {path} does not exist")
        test_files.append(path)
        test_labels.append(index[parts[1].strip()])
    order = sorted(range(len(test_files)), key=lambda i: test_files[i].name)
    splits = {"train": (train_files, np.asarray(train_labels, dtype=np.int64)),
              "test": ([test_files[i] for i in order], np.asarray([test_labels[i] for i in order], dtype=np.int64))}
    names = tuple(words.get(w, w) for w in classes)
    return classes, names, splits, root


def imagenet_files(data_dir: Path, classes: list, title: str) -> tuple:
    """{'train': (files, labels), 'test': (...)} of the classes' folders under imagenet/train and imagenet/val."""
    root = data_dir / DATASETS["imagenet10"]["folder"]
    splits = {}
    for split, folder in (("train", "train"), ("test", "val")):
        if not (root / folder).is_dir():
            raise _missing(root / folder, title, IMAGENET_LAYOUT, data_dir)
        files, labels = [], []
        for c, w in enumerate(classes):
            d = root / folder / w
            found = _images_in(d) if d.is_dir() else []
            if not found:
                raise DataError(f"{d}: no images of class {w} ({title} reads {IMAGENET_LAYOUT})")
            files += found
            labels += [c] * len(found)
        splits[split] = (files, np.asarray(labels, dtype=np.int64))
    return splits, root


def load_jpeg_set(source, data_dir: Path, progress: bool = True) -> ArrayDataset:
    """A JPEG set (a DataSource of kind 'builtin' naming one, or of kind 'imagenet' with a class list) at
    source.size (0: the set's default), images memory-mapped from the cache."""
    if source.kind == "imagenet":
        spec = IMAGENET_ANY
        classes = read_class_list(source.path)
        names = tuple(classes)
        splits, root = imagenet_files(data_dir, classes, f"ImageNet ({source.path})")
    elif source.where == "tinyimagenet":
        spec = DATASETS["tinyimagenet"]
        classes, names, splits, root = tiny_imagenet_files(data_dir)
    else:
        spec = DATASETS[source.where]
        classes = list(IDC_SUBSETS[source.where])
        names = tuple(classes)
        splits, root = imagenet_files(data_dir, classes, spec["title"])
    size = source.size or spec["size"]
    arrays = cached_splits(root, splits, classes, size, str(source), progress=progress)
    info = DatasetInfo(name=str(source), channels=3, size=size, num_classes=len(classes), mean=spec["mean"],
                       std=spec["std"], class_names=names, size_base=spec["size_base"])
    (tr_x, tr_y), (te_x, te_y) = arrays["train"], arrays["test"]
    return ArrayDataset(info, tr_x, tr_y, te_x, te_y)
