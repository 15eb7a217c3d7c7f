"""Datasets for udd_fast: read, validate, download, and move to a torch device.

Built-in datasets ('mnist', 'fashionmnist', 'svhn', 'cifar10', 'cifar100') are read from a
torchvision-compatible data directory (`registry`), so an existing torchvision data dir works
unchanged. Files on disk are checked by structure (headers, shapes, dtypes, label ranges and the
official sample counts: `validate`), never by md5, so re-packed copies are accepted; downloads of
missing files are md5-checked (`download`). Readers: `idx` (MNIST, FashionMNIST), `cifar` (a
restricted unpickler: a crafted file cannot run code), `svhn`, `imagenet` (Tiny-ImageNet and ImageNet
subsets, decoded once into `image_cache`), `user` (an .npz file or image folders). `real_data.RealData` holds a dataset on a torch device; `identity` says what identifies its
content, `source.DataSource` where it comes from (one spelling everywhere).

Environment variables:
    UDD_FAST_DATA            default data directory (else ~/.cache/udd_fast/data)
    UDD_FAST_CACHE           the JPEG sets' decoded images go to $UDD_FAST_CACHE/images (else
                             ~/.cache/udd_fast/images)
    UDD_FAST_ALLOW_PARTIAL   set to 1 to accept built-in files with any sample
                             counts (for tiny test files); all other checks stay.
"""
from .cifar import load_cifar
from .dataset import ArrayDataset, DataError, DatasetInfo
from .real_data import RealData
from .download import ensure_files
from .identity import data_facts, data_fingerprint, data_mismatch
from .idx import load_idx
from .image_cache import cache_dir
from .imagenet import load_jpeg_set
from .registry import CIFAR_LAYOUT, DATASETS, canonical_name, resolve_data_dir
from .source import DataSource
from .svhn import load_svhn
from .user import NO_TEST_IMAGES, from_arrays, load_folder, load_npz, nchw, read_class_folders

__all__ = ["ArrayDataset", "DATASETS", "DataError", "NO_TEST_IMAGES", "DataSource", "DatasetInfo", "RealData", "cache_dir", "canonical_name",
           "data_facts", "data_fingerprint", "data_mismatch", "from_arrays", "load_dataset", "nchw", "read_class_folders",
           "resolve_data_dir"]


def load_dataset(source, data_dir=None, download: bool = True, progress: bool = False) -> ArrayDataset:
    """Load a dataset as uint8 NCHW numpy arrays.

    ``source`` is a DataSource, or what DataSource.parse reads: a built-in name/alias (see
    ``canonical_name``), or a path to an existing ``.npz`` file or image-folder directory (user data;
    ``data_dir`` and ``download`` are then ignored). Missing built-in files are downloaded when
    ``download`` is true; otherwise a DataError lists them with the official URLs. The JPEG sets
    (Tiny-ImageNet, ImageNet subsets) are never downloaded; their first read decodes them into the
    image cache (with a progress bar if ``progress``), and their images come back memory-mapped.
    """
    source = source if isinstance(source, DataSource) else DataSource.parse(source)
    source.check_loadable()
    if source.kind == "npz":
        return load_npz(source.path)
    if source.kind == "folder":
        return load_folder(source.path)
    root = resolve_data_dir(data_dir)
    if source.decoded:
        return load_jpeg_set(source, root, progress=progress)
    key = source.where
    ensure_files(key, root, download)
    if key in ("mnist", "fashionmnist"):
        return load_idx(key, root)
    if key in CIFAR_LAYOUT:
        return load_cifar(key, root)
    return load_svhn(root)
