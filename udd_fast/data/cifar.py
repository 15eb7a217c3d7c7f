"""CIFAR-10 and CIFAR-100: python pickles, read by an unpickler that builds numpy arrays and builtin
containers only (a crafted file cannot run code)."""
import pickle
from pathlib import Path

import numpy as np

from .dataset import ArrayDataset, DataError
from .registry import CIFAR_LAYOUT, DATASETS, REPLACE_HINT
from .validate import as_int_labels, builtin_dataset, check_builtin_split, get_key, validate_split


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
                        f"crafted or foreign pickle; nothing of it was run); {REPLACE_HINT}") from None
    except Exception as exc:  # corrupt pickles raise many different exception types
        raise DataError(f"{path}: cannot unpickle ({type(exc).__name__}: {exc}); {REPLACE_HINT}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}; {REPLACE_HINT}")
    return {_text(k): v for k, v in obj.items()}


def _text(value) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _read_cifar_batch(path: Path, labels_key: str, num_classes: int):
    d = _read_pickle(path)
    data = np.asarray(get_key(d, "data", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: expected 'data' as uint8 (N, 3072), found {data.dtype} {data.shape}")
    images = data.reshape(len(data), 3, 32, 32)  # rows are channel-major
    labels = as_int_labels(get_key(d, labels_key, path), str(path))
    validate_split(images, labels, where=str(path), channels=3, size=32, num_classes=num_classes)
    return images, labels


def load_cifar(key: str, root: Path) -> ArrayDataset:
    lay, spec = CIFAR_LAYOUT[key], DATASETS[key]
    folder = root / spec["folder"]
    meta_path = folder / lay["meta"]
    names = tuple(_text(n) for n in get_key(_read_pickle(meta_path), lay["names_key"], meta_path))
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
        check_builtin_split(key, split, images, labels, where)
        splits[split] = (images, labels)
    return builtin_dataset(key, names, splits["train"], splits["test"])
