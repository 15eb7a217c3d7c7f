"""Datasets for udd_fast: read, validate, download, and move to a torch device.

Built-in datasets ('mnist', 'fashionmnist', 'svhn', 'cifar10', 'cifar100') are read
from a torchvision-compatible data directory, so an existing torchvision data dir
works unchanged:

    <data_dir>/MNIST/raw/{train-images-idx3-ubyte, train-labels-idx1-ubyte,
                          t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte}[.gz]
    <data_dir>/FashionMNIST/raw/...            (same names)
    <data_dir>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <data_dir>/cifar-100-python/{train, test, meta}
    <data_dir>/svhn/{train_32x32.mat, test_32x32.mat}

Files on disk are checked by structure (headers, shapes, dtypes, label ranges and
the official sample counts), never by md5, so re-packed copies are accepted. CIFAR
pickles are read by an unpickler that builds numpy arrays and builtin containers
only (a crafted file cannot run code).
Downloads of missing files are md5-checked.

Environment variables:
    UDD_FAST_DATA            default data directory (else ~/.cache/udd_fast/data)
    UDD_FAST_ALLOW_PARTIAL   set to 1 to accept built-in files with any sample
                             counts (for tiny test files); all other checks stay.

User data: ``load_dataset`` also accepts a path to an ``.npz`` file or to an
image-folder tree; see ``_load_npz`` and ``_load_folder``. Without an explicit
test split, every 10th sample of each class (the 10th, 20th, ... in dataset order)
is held out as the test split.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

ENV_DATA_DIR = "UDD_FAST_DATA"
ENV_ALLOW_PARTIAL = "UDD_FAST_ALLOW_PARTIAL"
DOWNLOAD_TIMEOUT = 30.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

_REPLACE_HINT = "delete it and re-download it (load_dataset(..., download=True)) or place an intact copy there"


class DataError(RuntimeError):
    """A user-facing data problem; the message names the file(s) and what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # canonical built-in name, or 'npz:<abs path>' / 'folder:<abs path>'
    channels: int
    size: int  # images are square: H == W == size
    num_classes: int
    mean: tuple  # per channel, on the [0, 1] scale
    std: tuple
    class_names: tuple
    size_base: int


@dataclass
class ArrayDataset:
    info: DatasetInfo
    train_images: np.ndarray  # uint8 [N, C, H, W], C-contiguous
    train_labels: np.ndarray  # int64 [N]
    test_images: np.ndarray  # uint8 [M, C, H, W]
    test_labels: np.ndarray  # int64 [M]


# ----------------------------------------------------------------------------
# Static facts about the built-in datasets
# ----------------------------------------------------------------------------

_DIGITS = tuple(str(i) for i in range(10))
_FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# canonical name -> facts. 'class_names' is None where the names come from the files.
DATASETS = {
    "mnist": dict(title="MNIST", folder="MNIST/raw", channels=1, size=28, num_classes=10,
                  mean=(0.1307,), std=(0.3081,), size_base=28,
                  train_count=60000, test_count=10000, class_names=_DIGITS),
    "fashionmnist": dict(title="FashionMNIST", folder="FashionMNIST/raw", channels=1, size=28,
                         num_classes=10, mean=(0.2861,), std=(0.3530,), size_base=32,
                         train_count=60000, test_count=10000, class_names=_FASHION_NAMES),
    "svhn": dict(title="SVHN", folder="svhn", channels=3, size=32, num_classes=10,
                 mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970), size_base=32,
                 train_count=73257, test_count=26032, class_names=_DIGITS),
    "cifar10": dict(title="CIFAR-10", folder="cifar-10-batches-py", channels=3, size=32,
                    num_classes=10, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
                    size_base=32, train_count=50000, test_count=10000, class_names=None),
    "cifar100": dict(title="CIFAR-100", folder="cifar-100-python", channels=3, size=32,
                     num_classes=100, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
                     size_base=32, train_count=50000, test_count=10000, class_names=None),
}

_ALIASES = {"fashion": "fashionmnist"}

# idx file stems for MNIST-like datasets, per split: (images, labels)
_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_IMAGES_MAGIC = 2051  # 0x0803: uint8, 3 dims
_IDX_LABELS_MAGIC = 2049  # 0x0801: uint8, 1 dim

_CIFAR_LAYOUT = {
    "cifar10": dict(train=tuple(f"data_batch_{k}" for k in range(1, 6)), test=("test_batch",),
                    meta="batches.meta", labels_key="labels", names_key="label_names"),
    "cifar100": dict(train=("train",), test=("test",), meta="meta",
                     labels_key="fine_labels", names_key="fine_label_names"),
}

_SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}

# ----------------------------------------------------------------------------
# Download sources (url -> md5 of the downloaded file)
# ----------------------------------------------------------------------------

_MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_SVHN_MIRROR = "http://ufldl.stanford.edu/housenumbers/"
_CIFAR_ARCHIVES = {  # dataset -> (url, archive file name)
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz"),
}

_MD5 = {
    _MNIST_MIRROR + "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    _MNIST_MIRROR + "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    _MNIST_MIRROR + "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    _MNIST_MIRROR + "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    _FASHION_MIRROR + "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    _FASHION_MIRROR + "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    _FASHION_MIRROR + "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    _FASHION_MIRROR + "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    _CIFAR_ARCHIVES["cifar10"][0]: "c58f30108f718f92721af3b95e74349a",
    _CIFAR_ARCHIVES["cifar100"][0]: "eb9058c3a382ffc7106e4002c42a8d85",
    _SVHN_MIRROR + "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    _SVHN_MIRROR + "test_32x32.mat": "eb5a983be6a315427106f1b2a9ae4c5e",
}


# ----------------------------------------------------------------------------
# Names and directories
# ----------------------------------------------------------------------------

def canonical_name(name: str) -> str:
    """Map a built-in dataset name or alias to its canonical form (case-insensitive)."""
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        valid = ", ".join(sorted(DATASETS))
        raise DataError(f"unknown dataset {name!r}; valid names: {valid} "
                        "(or a path to an existing .npz file or image-folder directory)")
    return key


def resolve_data_dir(data_dir=None) -> Path:
    """The data directory: the argument, else $UDD_FAST_DATA, else ~/.cache/udd_fast/data."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(ENV_DATA_DIR) or Path.home() / ".cache" / "udd_fast" / "data"
    return Path(data_dir).expanduser().absolute()


def _allow_partial() -> bool:
    return os.environ.get(ENV_ALLOW_PARTIAL, "") == "1"


# ----------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------

def load_dataset(name: str, data_dir=None, download: bool = True) -> ArrayDataset:
    """Load a dataset as uint8 NCHW numpy arrays.

    ``name`` is a built-in name/alias (see ``canonical_name``), or a path to an
    existing ``.npz`` file or image-folder directory (user data; ``data_dir`` and
    ``download`` are then ignored). Missing built-in files are downloaded when
    ``download`` is true; otherwise a DataError lists them with the official URLs.
    """
    user_path = user_data_path(name)
    if user_path is not None:
        return _load_npz(user_path) if user_path.is_file() else _load_folder(user_path)
    key = canonical_name(name)
    root = resolve_data_dir(data_dir)
    _ensure_files(key, root, download)
    if key in ("mnist", "fashionmnist"):
        return _load_idx_dataset(key, root)
    if key in _CIFAR_LAYOUT:
        return _load_cifar(key, root)
    return _load_svhn(root)


def user_data_path(name) -> Path | None:
    """The resolved absolute path of user data, or None for a built-in name. Built-in names win over
    same-named files in the working directory unless given with a separator."""
    text = str(name)
    looks_like_path = os.sep in text or "/" in text or text.lower().endswith(".npz")
    try:
        canonical_name(text)
        if not looks_like_path:
            return None
    except DataError:
        pass
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve()  # one name for one dataset, whatever the working directory
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise DataError(f"{path}: user data files must be .npz (or pass an image-folder directory)")
        return path.resolve()
    if looks_like_path:
        raise DataError(f"{path}: no such .npz file or directory; pass an existing path or a "
                        f"built-in dataset name ({', '.join(sorted(DATASETS))})")
    canonical_name(text)  # raises the unknown-name error
    return None


# ----------------------------------------------------------------------------
# Which files a built-in needs, and what to do when they are missing
# ----------------------------------------------------------------------------

def _idx_path(raw_dir: Path, stem: str) -> Path:
    """Prefer the plain idx file if present, else the .gz (also the name reported when missing)."""
    plain = raw_dir / stem
    return plain if plain.exists() else raw_dir / (stem + ".gz")


def _required_files(key: str, root: Path) -> list[Path]:
    folder = root / DATASETS[key]["folder"]
    if key in ("mnist", "fashionmnist"):
        return [_idx_path(folder, stem) for pair in _IDX_STEMS.values() for stem in pair]
    if key in _CIFAR_LAYOUT:
        lay = _CIFAR_LAYOUT[key]
        return [folder / f for f in (*lay["train"], *lay["test"], lay["meta"])]
    return [folder / f for f in _SVHN_FILES.values()]


def _official_urls(key: str) -> list[str]:
    if key in _CIFAR_ARCHIVES:
        return [_CIFAR_ARCHIVES[key][0]]
    if key == "svhn":
        return [_SVHN_MIRROR + f for f in _SVHN_FILES.values()]
    mirror = _MNIST_MIRROR if key == "mnist" else _FASHION_MIRROR
    return [mirror + stem + ".gz" for pair in _IDX_STEMS.values() for stem in pair]


def _missing_message(key: str, root: Path, missing: list[Path], reason: str) -> str:
    spec = DATASETS[key]
    lines = [f"{spec['title']} files are missing ({reason}):"]
    lines += [f"  {p}" for p in missing]
    place = root / spec["folder"]
    if key in _CIFAR_ARCHIVES:
        lines.append(f"Download {_CIFAR_ARCHIVES[key][0]} and extract it into {root} "
                     f"(it unpacks to {place}), or call load_dataset(..., download=True).")
    else:
        lines.append(f"Place them in {place} (the .gz or the uncompressed file for MNIST-style data), "
                     "or call load_dataset(..., download=True). Official URLs:")
        lines += [f"  {u}" for u in _official_urls(key)]
    return "\n".join(lines)


def _ensure_files(key: str, root: Path, download: bool) -> None:
    missing = [p for p in _required_files(key, root) if not p.exists()]
    if not missing:
        return
    if not download:
        raise DataError(_missing_message(key, root, missing, "download=False"))
    _download(key, root, missing)
    still = [p for p in _required_files(key, root) if not p.exists()]
    if still:
        raise DataError(_missing_message(key, root, still, "still missing after download"))


# ----------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------

class _NetworkError(Exception):
    """Internal: the network failed (turned into a DataError listing the missing files)."""


def _urlopen(url, timeout):
    """The single point of network access (tests monkeypatch this)."""
    return urllib.request.urlopen(url, timeout=timeout)


def _download(key: str, root: Path, missing: list[Path]) -> None:
    try:
        if key in _CIFAR_ARCHIVES:
            url, archive_name = _CIFAR_ARCHIVES[key]
            archive = root / archive_name
            _fetch(url, archive)
            _extract_tar(archive, root, DATASETS[key]["folder"])
            return
        mirror = {"mnist": _MNIST_MIRROR, "fashionmnist": _FASHION_MIRROR, "svhn": _SVHN_MIRROR}[key]
        for path in missing:
            # MNIST-style files are always downloaded as .gz, the name we report when missing
            _fetch(mirror + path.name, path)
    except _NetworkError as exc:
        raise DataError(_missing_message(key, root, missing, f"download failed: {exc}")) from exc


def _fetch(url: str, dest: Path) -> None:
    """Stream url to dest.part, check its md5, then rename to dest (atomic)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        actual = _stream_to(url, part)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    expected = _MD5[url]
    if actual != expected:
        part.unlink(missing_ok=True)
        raise DataError(f"md5 mismatch for {url}: expected {expected}, got {actual}; "
                        "the download was deleted, try again or place the file by hand")
    os.replace(part, dest)


def _stream_to(url: str, part: Path) -> str:
    """Write the body of url to part; return its md5 hex digest."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with _urlopen(url, DOWNLOAD_TIMEOUT) as resp, open(part, "wb") as fh:
            with _progress_bar(_content_length(resp), Path(part).name[: -len(".part")]) as bar:
                while chunk := resp.read(1 << 20):
                    fh.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _NetworkError(f"{url}: {exc}") from exc
    return digest.hexdigest()


def _content_length(resp) -> int | None:
    headers = getattr(resp, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    return int(value) if value and str(value).isdigit() else None


class _NoBar:
    """Stand-in when tqdm is not installed."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        pass


def _progress_bar(total, desc):
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    # disable=None: no bar when stderr is not a terminal (CI logs, tests)
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=None)


def _safe_member_path(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    rel = PurePosixPath(member.name)
    if rel.is_absolute() or ".." in rel.parts or member.name.startswith(("/", "\\")):
        raise DataError(f"{archive}: refusing to extract unsafe path {member.name!r}")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: refusing to extract {member.name!r} (not a regular file or directory)")
    return rel


def _extract_tar(archive: Path, root: Path, folder: str) -> None:
    """Extract archive into a temp dir under root, move missing files of `folder` into
    place, and delete the temp dir and the archive."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                rel = _safe_member_path(member, archive)
                target = tmp.joinpath(*rel.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        src_dir = tmp / folder
        if not src_dir.is_dir():
            raise DataError(f"{archive}: archive has no folder {folder!r}")
        dest_dir = root / folder
        dest_dir.mkdir(parents=True, exist_ok=True)
        for item in sorted(src_dir.iterdir()):
            if not (dest_dir / item.name).exists():  # never overwrite files the user placed
                os.replace(item, dest_dir / item.name)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{archive}: cannot extract ({exc}); try the download again") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        archive.unlink(missing_ok=True)


# ----------------------------------------------------------------------------
# Validation shared by all readers
# ----------------------------------------------------------------------------

def _as_int_labels(labels, where: str) -> np.ndarray:
    """Labels as int64 [N]; integral floats are accepted (MATLAB stores doubles)."""
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{where}: labels must be 1-D, found shape {arr.shape}")
    if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and arr.size == 0):
        raise DataError(f"{where}: labels must be integers, found dtype {arr.dtype}")
    return arr.astype(np.int64)


def _validate_split(images: np.ndarray, labels: np.ndarray, *, where: str, channels: int,
                    size: int, num_classes: int, require_all_classes: bool = False,
                    expected_count: int | None = None) -> None:
    """Raise DataError (naming `where`) unless images/labels form a valid split."""
    if images.dtype != np.uint8:
        raise DataError(f"{where}: expected uint8 images, found {images.dtype}")
    if images.ndim != 4 or images.shape[1:] != (channels, size, size):
        raise DataError(f"{where}: expected images of shape (N, {channels}, {size}, {size}), "
                        f"found {images.shape}")
    if labels.shape != (len(images),):
        raise DataError(f"{where}: {len(images)} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where}: labels must be in [0, {num_classes}), found range "
                        f"[{labels.min()}, {labels.max()}]")
    if require_all_classes:
        absent = np.flatnonzero(np.bincount(labels, minlength=num_classes) == 0)
        if absent.size:
            raise DataError(f"{where}: every class must be present in the training split; "
                            f"classes {absent.tolist()[:20]} have no samples")
    if expected_count is not None and not _allow_partial() and len(images) != expected_count:
        raise DataError(f"{where}: expected {expected_count} samples, found {len(images)} "
                        f"(set {ENV_ALLOW_PARTIAL}=1 to accept partial files)")


def _builtin_dataset(key, class_names, train, test) -> ArrayDataset:
    spec = DATASETS[key]
    info = DatasetInfo(name=key, channels=spec["channels"], size=spec["size"],
                       num_classes=spec["num_classes"], mean=tuple(spec["mean"]),
                       std=tuple(spec["std"]), class_names=tuple(class_names),
                       size_base=spec["size_base"])
    return ArrayDataset(info, *_contiguous(*train), *_contiguous(*test))


def _contiguous(images, labels):
    return np.ascontiguousarray(images, dtype=np.uint8), np.ascontiguousarray(labels, dtype=np.int64)


def _check_builtin_split(key, split, images, labels, where):
    spec = DATASETS[key]
    _validate_split(images, labels, where=where, channels=spec["channels"], size=spec["size"],
                    num_classes=spec["num_classes"], require_all_classes=(split == "train"),
                    expected_count=spec[f"{split}_count"])


# ----------------------------------------------------------------------------
# MNIST / FashionMNIST (idx files)
# ----------------------------------------------------------------------------

def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip file ({exc}); {_REPLACE_HINT}") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc}); {_REPLACE_HINT}") from exc


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an idx file (big-endian header: magic, then one uint32 per dimension)."""
    raw = _read_bytes(path)
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        raise DataError(f"{path}: not an idx file of the expected kind (magic number {found}, "
                        f"expected {magic}); {_REPLACE_HINT}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims)  # Python integers: a crafted header cannot wrap around
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes, but its header (dims {dims}) needs {expected}; "
                        f"{_REPLACE_HINT}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _load_idx_dataset(key: str, root: Path) -> ArrayDataset:
    raw_dir = root / DATASETS[key]["folder"]
    splits = {}
    for split, (img_stem, lab_stem) in _IDX_STEMS.items():
        img_path, lab_path = _idx_path(raw_dir, img_stem), _idx_path(raw_dir, lab_stem)
        images = _read_idx(img_path, _IDX_IMAGES_MAGIC)[:, None]  # (N, 28, 28) -> (N, 1, 28, 28)
        labels = _read_idx(lab_path, _IDX_LABELS_MAGIC).astype(np.int64)
        _check_builtin_split(key, split, images, labels, f"{img_path} + {lab_path}")
        splits[split] = (images, labels)
    return _builtin_dataset(key, DATASETS[key]["class_names"], splits["train"], splits["test"])


# ----------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickles)
# ----------------------------------------------------------------------------

class _Refused(pickle.UnpicklingError):
    """A pickle that asks for something the CIFAR format never holds."""


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    """`_codecs.encode` as protocol-2 pickles use it for bytes (text.encode('latin1')), nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1", errors)


def _pickle_globals() -> dict:
    """What the official CIFAR pickles (Python 2, numpy 1) and re-packed ones (numpy 2, protocols 2-5)
    may name: numpy's array and scalar reconstruction, dtypes, and bytes via _codecs.encode."""
    arr = np.zeros(1)
    reconstruct, scalar = arr.__reduce__()[0], np.int64(0).__reduce__()[0]
    frombuffer = arr.__reduce_ex__(5)[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1_encode}
    for core in ("numpy.core", "numpy._core"):
        allowed.update({(f"{core}.multiarray", "_reconstruct"): reconstruct, (f"{core}.multiarray", "scalar"): scalar,
                        (f"{core}.numeric", "_frombuffer"): frombuffer})
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """pickle.Unpickler that builds only data: it refuses every global outside _pickle_globals(), so a
    crafted file cannot run code (pickle.load would call whatever the file names)."""

    allowed = _pickle_globals()

    def find_class(self, module, name):
        found = self.allowed.get((module, name))
        if found is None:
            raise _Refused(f"{module}.{name}")
        return found


def _read_pickle(path: Path) -> dict:
    """Unpickle a CIFAR file (data only); keys may be str or bytes (both are normalised to str)."""
    try:
        with open(path, "rb") as fh:
            # latin1 reads both Python 2 pickles (the original release) and Python 3 ones
            obj = _CifarUnpickler(fh, encoding="latin1").load()
    except _Refused as exc:
        raise DataError(f"{path}: refused: the file asks to call {exc}, which the CIFAR format never holds (a "
                        f"crafted or foreign pickle; nothing of it was run); {_REPLACE_HINT}") from None
    except Exception as exc:  # corrupt pickles raise many different exception types
        raise DataError(f"{path}: cannot unpickle ({type(exc).__name__}: {exc}); {_REPLACE_HINT}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}; {_REPLACE_HINT}")
    return {_text(k): v for k, v in obj.items()}


def _text(value) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _get_key(d: dict, key: str, path: Path):
    if key not in d:
        raise DataError(f"{path}: missing key {key!r} (found {sorted(d)}); {_REPLACE_HINT}")
    return d[key]


def _read_cifar_batch(path: Path, labels_key: str, num_classes: int):
    d = _read_pickle(path)
    data = np.asarray(_get_key(d, "data", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: expected 'data' as uint8 (N, 3072), found {data.dtype} {data.shape}")
    images = data.reshape(len(data), 3, 32, 32)  # rows are channel-major
    labels = _as_int_labels(_get_key(d, labels_key, path), str(path))
    _validate_split(images, labels, where=str(path), channels=3, size=32, num_classes=num_classes)
    return images, labels


def _load_cifar(key: str, root: Path) -> ArrayDataset:
    lay, spec = _CIFAR_LAYOUT[key], DATASETS[key]
    folder = root / spec["folder"]
    meta_path = folder / lay["meta"]
    names = tuple(_text(n) for n in _get_key(_read_pickle(meta_path), lay["names_key"], meta_path))
    if len(names) != spec["num_classes"]:
        raise DataError(f"{meta_path}: expected {spec['num_classes']} names in "
                        f"{lay['names_key']!r}, found {len(names)}")
    splits = {}
    for split in ("train", "test"):
        batches = [_read_cifar_batch(folder / f, lay["labels_key"], spec["num_classes"])
                   for f in lay[split]]
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        where = ", ".join(str(folder / f) for f in lay[split])
        _check_builtin_split(key, split, images, labels, where)
        splits[split] = (images, labels)
    return _builtin_dataset(key, names, splits["train"], splits["test"])


# ----------------------------------------------------------------------------
# SVHN (MATLAB files)
# ----------------------------------------------------------------------------

def _read_svhn_mat(path: Path):
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises several types on corrupt files
        raise DataError(f"{path}: cannot read MATLAB file ({type(exc).__name__}: {exc}); "
                        f"{_REPLACE_HINT}") from exc
    x = np.asarray(_get_key(mat, "X", path))
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: expected 'X' as uint8 (32, 32, 3, N), found {x.dtype} {x.shape}")
    images = x.transpose(3, 2, 0, 1)  # (H, W, C, N) -> (N, C, H, W)
    y = _as_int_labels(_get_key(mat, "y", path), str(path))
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DataError(f"{path}: SVHN labels 'y' must be in 1..10 (10 means digit 0), "
                        f"found range [{y.min()}, {y.max()}]")
    return images, np.where(y == 10, 0, y)


def _load_svhn(root: Path) -> ArrayDataset:
    folder = root / DATASETS["svhn"]["folder"]
    splits = {}
    for split, fname in _SVHN_FILES.items():
        images, labels = _read_svhn_mat(folder / fname)
        _check_builtin_split("svhn", split, images, labels, str(folder / fname))
        splits[split] = (images, labels)
    return _builtin_dataset("svhn", _DIGITS, splits["train"], splits["test"])


# ----------------------------------------------------------------------------
# User data (.npz file or image folders)
# ----------------------------------------------------------------------------

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


def _user_dataset(name: str, where: str, train: tuple, test: tuple | None, class_names) -> ArrayDataset:
    """Validate user arrays, hold out a test split if none is given, compute stats."""
    train_images, train_labels = train
    if train_labels.size and train_labels.min() < 0:
        raise DataError(f"{where}: labels must be 0..K-1, found {train_labels.min()}")
    num_classes = len(class_names) if class_names is not None else int(train_labels.max(initial=-1)) + 1
    if num_classes == 0:
        raise DataError(f"{where}: no training samples")
    if num_classes == 1:  # one class: every prediction is right, any accuracy would be meaningless
        raise DataError(f"{where}: one class found ({(class_names or ['0'])[0]!r}); distillation and its "
                        f"evaluation need at least 2 classes")
    channels, size = train_images.shape[1], train_images.shape[2]
    check = dict(channels=channels, size=size, num_classes=num_classes)
    _validate_split(train_images, train_labels, where=where, require_all_classes=True, **check)
    if test is None:
        held = _holdout_mask(train_labels)
        test = (train_images[held], train_labels[held])
        train = (train_images[~held], train_labels[~held])
    else:
        _validate_split(*test, where=where + " (test split)", **check)
    names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(num_classes))
    mean, std = _channel_stats(train[0])
    info = DatasetInfo(name=name, channels=channels, size=size, num_classes=num_classes,
                       mean=mean, std=std, class_names=names, size_base=32)
    return ArrayDataset(info, *_contiguous(*train), *_contiguous(*test))


def _user_images(arr: np.ndarray, where: str) -> np.ndarray:
    """uint8 or [0,1]-float images as (N,H,W), (N,H,W,C) or (N,C,H,W) -> uint8 (N,C,H,W).

    A 4-D array is NCHW when axis 1 is 1 or 3 and axes 2, 3 are equal; else NHWC when
    axis 3 is 1 or 3 and axes 1, 2 are equal (NCHW wins if both fit)."""
    if arr.dtype.kind == "f":
        if arr.size and not (np.all(np.isfinite(arr)) and arr.min() >= 0.0 and arr.max() <= 1.0):
            raise DataError(f"{where}: float images must lie in [0, 1]")
        arr = np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8 or float in [0, 1], found {arr.dtype}")
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


def _load_npz(path: Path) -> ArrayDataset:
    """User data in one .npz: 'images', 'labels' (0..K-1, every class present), optional
    'test_images'/'test_labels' and 'class_names'. Without a test split, every 10th
    sample of each class is held out as test."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zip/format errors come in many types
        raise DataError(f"{path}: cannot read .npz ({type(exc).__name__}: {exc})") from exc
    for key in ("images", "labels"):
        if key not in arrays:
            raise DataError(f"{path}: missing array {key!r} (found {sorted(arrays)})")
    if ("test_images" in arrays) != ("test_labels" in arrays):
        raise DataError(f"{path}: give both 'test_images' and 'test_labels' or neither")
    train = (_user_images(arrays["images"], f"{path}['images']"),
             _as_int_labels(arrays["labels"], f"{path}['labels']"))
    test = None
    if "test_images" in arrays:
        test = (_user_images(arrays["test_images"], f"{path}['test_images']"),
                _as_int_labels(arrays["test_labels"], f"{path}['test_labels']"))
    names = [str(n) for n in arrays["class_names"].tolist()] if "class_names" in arrays else None
    return _user_dataset(f"npz:{path}", str(path), train, test, names)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


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


def _load_folder(root: Path) -> ArrayDataset:
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
    return _user_dataset(f"folder:{root}", str(root), train, test, classes)


# ----------------------------------------------------------------------------
# On-device dataset
# ----------------------------------------------------------------------------

def _class_index_table(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """[K, max_count] table: row c = indices of class c in dataset order, padded with -1."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
    order = np.argsort(labels, kind="stable")  # stable keeps dataset order within a class
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(labels)) - starts[labels[order]]
    table = np.full((num_classes, int(counts.max(initial=0))), -1, dtype=np.int64)
    table[labels[order], rank] = order
    return table, counts


def _to_device(arr: np.ndarray, device) -> torch.Tensor:
    # copy read-only / non-contiguous arrays so torch.from_numpy is safe
    if not (arr.flags.writeable and arr.flags.c_contiguous):
        arr = np.ascontiguousarray(arr).copy()
    return torch.from_numpy(arr).to(device)


class RealData:
    """The training/test split on a torch device, indexed by class for sampling."""

    def __init__(self, ds: ArrayDataset, device):
        self.info = ds.info
        self.device = torch.device(device)
        self.images = _to_device(ds.train_images, self.device)
        self.labels = _to_device(ds.train_labels.astype(np.int64, copy=False), self.device)
        self.test_images = _to_device(ds.test_images, self.device)
        self.test_labels = _to_device(ds.test_labels.astype(np.int64, copy=False), self.device)
        table, counts = _class_index_table(ds.train_labels, ds.info.num_classes)
        self.class_indices = _to_device(table, self.device)
        self.class_counts = _to_device(counts, self.device)
        shape = (1, ds.info.channels, 1, 1)
        self.mean = torch.tensor(ds.info.mean, dtype=torch.float32, device=self.device).view(shape)
        self.std = torch.tensor(ds.info.std, dtype=torch.float32, device=self.device).view(shape)
        self._counts = counts  # host copy: avoids a device sync in first_of_class

    def to_float(self, idx: torch.Tensor) -> torch.Tensor:
        """images[idx] as float32 in [0, 1]."""
        return self.images[idx].to(torch.float32).div_(255.0)

    def first_of_class(self, c: int, n: int) -> torch.Tensor:
        """The first n training images of class c (dataset order), float32 in [0, 1]."""
        if not 0 <= c < self.info.num_classes:
            raise DataError(f"{self.info.name}: class {c} out of range [0, {self.info.num_classes})")
        if n > self._counts[c]:
            raise DataError(f"{self.info.name}: class {c} has {self._counts[c]} training images, "
                            f"{n} requested")
        return self.to_float(self.class_indices[c, :n])
