"""Tests for udd_fast.data: real MNIST/FashionMNIST/CIFAR-10, tiny official-format
CIFAR-100/SVHN files, user data, error messages, and the download path."""
import gzip
import hashlib
import io
import os
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import (cifar_batch, dump, idx_bytes, require_dataset, shared_data_dir, write_tiny_cifar10,
                     write_tiny_mnist)
from udd_fast.data import (DATASETS, ArrayDataset, DataError, DatasetInfo, RealData, canonical_name,
                           download, load_dataset, real_data, resolve_data_dir, user)

CIFAR_FILES = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch", "batches.meta"]
MNIST_STEMS = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


# ----------------------------------------------------------------------------
# Fixtures and writers for files in the official formats
# ----------------------------------------------------------------------------

@pytest.fixture
def partial(monkeypatch):
    monkeypatch.setenv("UDD_FAST_ALLOW_PARTIAL", "1")


def link_mnist(real_data_dir, tmp_path, name="MNIST", skip=()):
    """tmp_path/<name>/raw with symlinks to the real files except those in skip."""
    require_dataset(real_data_dir, name)
    raw = tmp_path / name / "raw"
    raw.mkdir(parents=True)
    for stem in MNIST_STEMS:
        if stem not in skip:
            (raw / f"{stem}.gz").symlink_to(real_data_dir / name / "raw" / f"{stem}.gz")
    return raw


def write_svhn(folder: Path, fname: str, images_nchw: np.ndarray, y: np.ndarray):
    folder.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(folder / fname, {"X": images_nchw.transpose(2, 3, 1, 0), "y": y.reshape(-1, 1)})


def write_png(path: Path, arr: np.ndarray, mode: str):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


# ----------------------------------------------------------------------------
# Names and directories
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("alias,expected", [
    ("fashion", "fashionmnist"), ("fashion-mnist", "fashionmnist"), ("fashion_mnist", "fashionmnist"),
    ("FashionMNIST", "fashionmnist"), ("cifar-10", "cifar10"), ("CIFAR100", "cifar100"),
    ("MNIST", "mnist"), ("SVHN", "svhn")])
def test_canonical_name_aliases(alias, expected):
    assert canonical_name(alias) == expected


def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError) as exc:
        load_dataset("celeba", download=False)
    for name in DATASETS:
        assert name in str(exc.value)


def test_missing_user_path_is_named(tmp_path):
    with pytest.raises(DataError, match="nothere.npz"):
        load_dataset(str(tmp_path / "nothere.npz"))


def test_resolve_data_dir(monkeypatch, tmp_path):
    assert resolve_data_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("UDD_FAST_DATA", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("UDD_FAST_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_dir() == tmp_path / ".cache" / "udd_fast" / "data"


def test_builtin_facts():
    assert DATASETS["mnist"]["size_base"] == 28 and DATASETS["fashionmnist"]["size_base"] == 32
    assert DATASETS["cifar100"]["mean"] == (0.4914, 0.4822, 0.4465)
    assert DATASETS["svhn"]["std"] == (0.1980, 0.2010, 0.1970)
    assert DATASETS["svhn"]["train_count"] == 73257 and DATASETS["svhn"]["test_count"] == 26032


# ----------------------------------------------------------------------------
# Real data
# ----------------------------------------------------------------------------

def test_mnist_real(mnist_arrays):
    mnist = mnist_arrays
    assert mnist.info.name == "mnist" and mnist.info.size_base == 28
    assert mnist.info.mean == (0.1307,) and mnist.info.std == (0.3081,)
    assert mnist.train_images.shape == (60000, 1, 28, 28) and mnist.test_images.shape == (10000, 1, 28, 28)
    assert mnist.train_images.dtype == np.uint8 and mnist.train_labels.dtype == np.int64
    assert mnist.train_images.flags.c_contiguous
    assert mnist.train_labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert mnist.test_labels[:3].tolist() == [7, 2, 1]
    counts = np.bincount(mnist.train_labels)
    assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert counts.sum() == 60000
    # the first digit (a 5) has ink in the middle and a blank border
    assert mnist.train_images[0, 0, 14].max() > 200 and mnist.train_images[0, 0, 0].max() == 0


def test_fashionmnist_real(real_data_dir):
    require_dataset(real_data_dir, "FashionMNIST")
    ds = load_dataset("fashion-mnist", real_data_dir, download=False)
    assert ds.info.name == "fashionmnist" and ds.info.size == 28 and ds.info.size_base == 32
    assert ds.info.class_names[9] == "Ankle boot" and ds.info.mean == (0.2861,)
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
    assert ds.train_labels[0] == 9


def test_plain_idx_matches_gz(tmp_path, real_data_dir, mnist_arrays):
    mnist = mnist_arrays
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in MNIST_STEMS:
        with gzip.open(real_data_dir / "MNIST" / "raw" / f"{stem}.gz") as src:
            (raw / stem).write_bytes(src.read())
    ds = load_dataset("mnist", tmp_path, download=False)
    np.testing.assert_array_equal(ds.train_images, mnist.train_images)
    np.testing.assert_array_equal(ds.test_labels, mnist.test_labels)


def test_cifar10_real(real_data_dir):
    require_dataset(real_data_dir, "cifar-10-batches-py")
    ds = load_dataset("cifar-10", real_data_dir, download=False)
    assert ds.info.name == "cifar10" and ds.info.channels == 3 and ds.info.size_base == 32
    assert ds.info.class_names == ("airplane", "automobile", "bird", "cat", "deer",
                                   "dog", "frog", "horse", "ship", "truck")
    assert ds.train_images.shape == (50000, 3, 32, 32) and ds.test_images.shape == (10000, 3, 32, 32)
    assert ds.train_images.dtype == np.uint8 and ds.train_images.flags.c_contiguous
    assert np.bincount(ds.train_labels).tolist() == [5000] * 10
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
    np.testing.assert_array_equal(ds.test_labels, np.load(shared_data_dir() / "cifar-10-derived" / "test_labels.npy"))
    # channel-major rows: the per-channel means are the well-known CIFAR-10 means
    means = ds.train_images.mean(axis=(0, 2, 3)) / 255
    np.testing.assert_allclose(means, ds.info.mean, atol=2e-4)


# ----------------------------------------------------------------------------
# Tiny files in the official formats
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("batch_bytes,meta_bytes", [(False, True), (True, False), (True, True)])
def test_cifar10_bytes_and_str_keys(tmp_path, partial, batch_bytes, meta_bytes):
    train, test = write_tiny_cifar10(tmp_path, batch_bytes=batch_bytes, meta_bytes=meta_bytes)
    ds = load_dataset("cifar10", tmp_path, download=False)
    np.testing.assert_array_equal(ds.train_images, train)
    np.testing.assert_array_equal(ds.test_images, test)
    assert ds.train_labels.tolist() == (np.arange(100) % 10).tolist()
    assert ds.test_labels.tolist() == list(range(9, -1, -1))
    assert ds.info.class_names == tuple(f"class{i}" for i in range(10))


def test_cifar_counts_checked_without_partial(tmp_path):
    write_tiny_cifar10(tmp_path)
    with pytest.raises(DataError, match=r"data_batch_1.*expected 50000 samples, found 100"):
        load_dataset("cifar10", tmp_path, download=False)


def test_cifar100_tiny(tmp_path, partial):
    folder = tmp_path / "cifar-100-python"
    rng = np.random.default_rng(2)
    train = rng.integers(0, 256, (200, 3, 32, 32), dtype=np.uint8)
    train_labels = np.arange(200)[::-1] % 100
    test = rng.integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    dump(folder / "train", cifar_batch(train, train_labels, "fine_labels", as_bytes=True))
    dump(folder / "test", cifar_batch(test, [3, 99, 0, 1, 2, 3, 4], "fine_labels"))
    dump(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                           "coarse_label_names": [f"c{i}" for i in range(20)]})
    ds = load_dataset("cifar100", tmp_path, download=False)
    assert ds.info.num_classes == 100 and ds.info.class_names[42] == "f42"
    np.testing.assert_array_equal(ds.train_labels, train_labels)
    np.testing.assert_array_equal(ds.train_images, train)
    assert ds.test_labels.tolist() == [3, 99, 0, 1, 2, 3, 4]


def test_svhn_tiny(tmp_path, partial):
    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, (30, 3, 32, 32), dtype=np.uint8)
    y_train = np.arange(30) % 10 + 1  # 1..10, 10 means digit 0
    test = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    write_svhn(tmp_path / "svhn", "train_32x32.mat", train, y_train.astype(np.uint8))
    write_svhn(tmp_path / "svhn", "test_32x32.mat", test, np.array([10, 1, 5, 10], dtype=np.uint8))
    ds = load_dataset("svhn", tmp_path, download=False)
    np.testing.assert_array_equal(ds.train_images, train)
    np.testing.assert_array_equal(ds.train_labels, y_train % 10)
    assert ds.test_labels.tolist() == [0, 1, 5, 0]
    assert ds.info.mean == (0.4377, 0.4438, 0.4728) and ds.train_images.flags.c_contiguous


def test_svhn_mismatched_counts(tmp_path, partial):
    imgs = np.zeros((20, 3, 32, 32), dtype=np.uint8)
    write_svhn(tmp_path / "svhn", "train_32x32.mat", imgs, (np.arange(19) % 10 + 1).astype(np.uint8))
    write_svhn(tmp_path / "svhn", "test_32x32.mat", imgs, (np.arange(20) % 10 + 1).astype(np.uint8))
    with pytest.raises(DataError, match=r"train_32x32\.mat.*20 images but 19 labels"):
        load_dataset("svhn", tmp_path, download=False)


def test_tiny_mnist_gz_and_plain_mixed(tmp_path, partial):
    arrays = write_tiny_mnist(tmp_path / "MNIST" / "raw")
    os.replace(tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte.gz", tmp_path / "x.gz")
    (tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte").write_bytes(gzip.decompress((tmp_path / "x.gz").read_bytes()))
    ds = load_dataset("mnist", tmp_path, download=False)
    np.testing.assert_array_equal(ds.train_images[:, 0], arrays["train-images-idx3-ubyte"])
    assert ds.test_labels.tolist() == (np.arange(10) % 10).tolist()


# ----------------------------------------------------------------------------
# Bad built-in files
# ----------------------------------------------------------------------------

def test_missing_files_without_download(tmp_path):
    with pytest.raises(DataError) as exc:
        load_dataset("mnist", tmp_path, download=False)
    msg = str(exc.value)
    for stem in MNIST_STEMS:
        assert str(tmp_path / "MNIST" / "raw" / f"{stem}.gz") in msg
        assert f"https://ossci-datasets.s3.amazonaws.com/mnist/{stem}.gz" in msg
    assert "download=False" in msg


def test_only_missing_files_are_listed(tmp_path, real_data_dir):
    link_mnist(real_data_dir, tmp_path, "FashionMNIST", skip=("t10k-labels-idx1-ubyte",))
    with pytest.raises(DataError) as exc:
        load_dataset("fashion", tmp_path, download=False)
    msg = str(exc.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg.split("Place them")[0]
    assert "train-images-idx3-ubyte.gz" not in msg.split("Place them")[0]


def test_truncated_gz(tmp_path, real_data_dir):
    raw = link_mnist(real_data_dir, tmp_path, skip=("t10k-labels-idx1-ubyte",))
    good = (real_data_dir / "MNIST/raw/t10k-labels-idx1-ubyte.gz").read_bytes()
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz.*(corrupt|truncated).*delete"):
        load_dataset("mnist", tmp_path, download=False)


def test_wrong_magic(tmp_path, partial):
    raw = tmp_path / "MNIST" / "raw"
    write_tiny_mnist(raw, gz=False)
    path = raw / "train-labels-idx1-ubyte"
    payload = bytearray(path.read_bytes())
    payload[3] = 3  # 2049 -> 2051: an images header on a labels file
    path.write_bytes(bytes(payload))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*magic number 2051, expected 2049"):
        load_dataset("mnist", tmp_path, download=False)


def test_idx_size_mismatch(tmp_path, partial):
    raw = tmp_path / "MNIST" / "raw"
    write_tiny_mnist(raw, gz=False)
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*bytes.*needs"):
        load_dataset("mnist", tmp_path, download=False)


def test_label_out_of_range(tmp_path, partial):
    raw = tmp_path / "MNIST" / "raw"
    write_tiny_mnist(raw, gz=False)
    path = raw / "train-labels-idx1-ubyte"
    payload = bytearray(path.read_bytes())
    payload[8 + 3] = 10  # 4th label
    path.write_bytes(bytes(payload))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*\[0, 10\).*\[0, 10\]"):
        load_dataset("mnist", tmp_path, download=False)


def test_mnist_counts_checked(tmp_path):
    write_tiny_mnist(tmp_path / "MNIST" / "raw")
    with pytest.raises(DataError, match="expected 60000 samples, found 20"):
        load_dataset("mnist", tmp_path, download=False)


def test_mnist_missing_class(tmp_path, partial):
    raw = tmp_path / "MNIST" / "raw"
    write_tiny_mnist(raw, gz=False)
    labels = np.zeros(20, dtype=np.uint8)
    (raw / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(DataError, match=r"train-labels.*every class must be present"):
        load_dataset("mnist", tmp_path, download=False)


def test_corrupt_pickle(tmp_path, partial):
    write_tiny_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match=r"data_batch_3.*cannot unpickle"):
        load_dataset("cifar10", tmp_path, download=False)


def test_cifar_mismatched_counts(tmp_path, partial):
    write_tiny_cifar10(tmp_path)
    imgs = np.zeros((10, 3, 32, 32), dtype=np.uint8)
    dump(tmp_path / "cifar-10-batches-py" / "test_batch", cifar_batch(imgs, list(range(9))))
    with pytest.raises(DataError, match=r"test_batch.*10 images but 9 labels"):
        load_dataset("cifar10", tmp_path, download=False)


def test_cifar_wrong_dtype(tmp_path, partial):
    write_tiny_cifar10(tmp_path)
    imgs = np.zeros((10, 3072), dtype=np.float32)
    dump(tmp_path / "cifar-10-batches-py" / "test_batch", {"data": imgs, "labels": list(range(10))})
    with pytest.raises(DataError, match=r"test_batch.*uint8.*float32"):
        load_dataset("cifar10", tmp_path, download=False)


# ----------------------------------------------------------------------------
# User data: npz
# ----------------------------------------------------------------------------

def _user_arrays(n=40, c=3, s=8, k=4, seed=4):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, c, s, s), dtype=np.uint8)
    labels = np.arange(n) % k
    return images, labels


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nhw"])
def test_npz_layouts(tmp_path, layout):
    images, labels = _user_arrays(c=1 if layout == "nhw" else 3)
    stored = {"nchw": images, "nhwc": images.transpose(0, 2, 3, 1), "nhw": images[:, 0]}[layout]
    path = tmp_path / "d.npz"
    np.savez(path, images=stored, labels=labels, test_images=stored[:5], test_labels=labels[:5])
    ds = load_dataset(str(path))
    assert ds.info.name == f"npz:{path.absolute()}" and ds.info.size_base == 32
    np.testing.assert_array_equal(ds.train_images, images)
    np.testing.assert_array_equal(ds.test_images, images[:5])
    assert ds.info.channels == images.shape[1] and ds.info.size == 8 and ds.info.num_classes == 4
    x = images.astype(np.float64) / 255
    np.testing.assert_allclose(ds.info.mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(ds.info.std, x.std(axis=(0, 2, 3)), rtol=1e-12)


def test_npz_float_and_holdout(tmp_path):
    images, labels = _user_arrays(n=45, k=2)
    floats = images.astype(np.float32) / 255
    path = tmp_path / "f.npz"
    np.savez(path, images=floats, labels=labels, class_names=np.array(["cat", "dog"]))
    ds = load_dataset(str(path))
    assert ds.info.class_names == ("cat", "dog")
    # every 10th sample of each class goes to test: class 0 sits at 0,2,4,..., so its
    # ranks 9 and 19 are samples 18 and 38; class 1's are 19 and 39
    assert ds.test_labels.tolist() == [0, 1, 0, 1]
    held = np.array([18, 19, 38, 39])
    np.testing.assert_array_equal(ds.test_images, images[held])
    np.testing.assert_array_equal(ds.train_images, np.delete(images, held, axis=0))
    assert len(ds.train_labels) == 41


@pytest.mark.parametrize("bad,match", [
    (dict(labels=np.array([0, 1, 5] * 4)), "every class must be present"),
    (dict(labels=np.arange(11) % 4), "12 images but 11 labels"),
    (dict(images=np.zeros((12, 3, 8, 6), np.uint8)), "square"),
    (dict(images=np.full((12, 8, 8), 1.5, np.float32)), r"\[0, 1\]"),
    (dict(images=np.zeros((12, 8, 8), np.int32)), "uint8 or float"),
    (dict(labels=np.arange(12) - 1), "0..K-1"),
])
def test_npz_errors(tmp_path, bad, match):
    arrays = dict(images=np.zeros((12, 8, 8), np.uint8), labels=np.arange(12) % 4)
    arrays.update(bad)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match) as exc:
        load_dataset(str(path))
    assert "bad.npz" in str(exc.value)


# ----------------------------------------------------------------------------
# User data: image folders
# ----------------------------------------------------------------------------

def test_folder_without_split(tmp_path):
    rng = np.random.default_rng(5)
    expected = {}
    for cls in ("b_dog", "a_cat"):
        for i in range(11):
            arr = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            write_png(tmp_path / cls / f"{i:02d}.png", arr, "RGB")
            expected[(cls, i)] = arr.transpose(2, 0, 1)
    (tmp_path / "a_cat" / "notes.txt").write_text("ignored")
    ds = load_dataset(str(tmp_path))
    assert ds.info.name == f"folder:{tmp_path}" and ds.info.class_names == ("a_cat", "b_dog")
    assert ds.info.channels == 3 and ds.info.size == 6
    assert ds.train_labels.tolist() == [0] * 10 + [1] * 10 and ds.test_labels.tolist() == [0, 1]
    np.testing.assert_array_equal(ds.train_images[0], expected[("a_cat", 0)])
    np.testing.assert_array_equal(ds.train_images[10], expected[("b_dog", 0)])
    np.testing.assert_array_equal(ds.test_images[0], expected[("a_cat", 9)])  # the 10th file


def test_folder_with_split_grayscale(tmp_path):
    rng = np.random.default_rng(6)
    first = None
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("x", "y"):
            for i in range(n):
                arr = rng.integers(0, 256, (5, 5), dtype=np.uint8)
                first = arr if first is None else first
                write_png(tmp_path / split / cls / f"{i}.png", arr, "L")
    ds = load_dataset(str(tmp_path))
    assert ds.info.channels == 1 and ds.train_images.shape == (6, 1, 5, 5)
    assert ds.test_images.shape == (4, 1, 5, 5) and ds.test_labels.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(ds.train_images[0, 0], first)


def test_folder_mixed_modes_become_rgb(tmp_path):
    gray = np.full((4, 4), 77, np.uint8)
    write_png(tmp_path / "a" / "0.png", gray, "L")
    write_png(tmp_path / "b" / "0.png", np.zeros((4, 4, 3), np.uint8), "RGB")
    ds = load_dataset(str(tmp_path))
    assert ds.info.channels == 3 and (ds.train_images[0] == 77).all()


def test_folder_mixed_sizes(tmp_path):
    write_png(tmp_path / "a" / "0.png", np.zeros((4, 4), np.uint8), "L")
    write_png(tmp_path / "b" / "0.png", np.zeros((5, 5), np.uint8), "L")
    with pytest.raises(DataError, match=r"b/0\.png: size 5x5 differs from 4x4"):
        load_dataset(str(tmp_path))


def test_folder_non_square(tmp_path):
    write_png(tmp_path / "a" / "0.png", np.zeros((4, 6), np.uint8), "L")
    with pytest.raises(DataError, match=r"a/0\.png.*square.*6x4"):
        load_dataset(str(tmp_path))


def test_folder_unreadable_image(tmp_path):
    write_png(tmp_path / "a" / "0.png", np.zeros((4, 4), np.uint8), "L")
    (tmp_path / "a" / "1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"a/1\.jpg: unreadable image"):
        load_dataset(str(tmp_path))


# ----------------------------------------------------------------------------
# RealData
# ----------------------------------------------------------------------------

def test_realdata_mnist(mnist_arrays):
    mnist = mnist_arrays
    real = RealData(mnist, "cpu")
    assert real.images.dtype == torch.uint8 and real.images.shape == (60000, 1, 28, 28)
    assert real.labels.dtype == torch.int64 and real.test_images.shape == (10000, 1, 28, 28)
    assert real.class_counts.tolist() == np.bincount(mnist.train_labels).tolist()
    assert real.class_indices.shape == (10, 6742)
    for c in (0, 1, 5):
        expected = np.flatnonzero(mnist.train_labels == c)
        row = real.class_indices[c].numpy()
        np.testing.assert_array_equal(row[: len(expected)], expected)
        assert (row[len(expected):] == -1).all()
    first = real.first_of_class(5, 3)
    idx = np.flatnonzero(mnist.train_labels == 5)[:3]
    assert idx[0] == 0
    assert first.dtype == torch.float32 and first.shape == (3, 1, 28, 28)
    np.testing.assert_allclose(first.numpy(), mnist.train_images[idx] / 255.0, rtol=1e-6)
    x = real.to_float(torch.arange(1000))
    assert x.min().item() == 0.0 and x.max().item() == 1.0
    assert real.mean.shape == (1, 1, 1, 1) and abs(real.mean.item() - 0.1307) < 1e-7
    with pytest.raises(DataError, match="5421"):
        real.first_of_class(5, 5422)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=60))
def test_class_index_table_property(labels):
    labels = np.array(labels, dtype=np.int64)
    labels[: 5] = np.arange(min(5, len(labels)))  # keep some classes present
    table, counts = real_data._class_index_table(labels, 5)
    for c in range(5):
        expected = [i for i, v in enumerate(labels) if v == c]
        assert table[c, : len(expected)].tolist() == expected
        assert (table[c, len(expected):] == -1).all() and counts[c] == len(expected)
    mask = user._holdout_mask(labels)
    for c in range(5):
        ranks = np.flatnonzero(labels == c)
        assert mask[ranks].tolist() == [(r % 10) == 9 for r in range(len(ranks))]


def test_realdata_readonly_arrays():
    images, labels = _user_arrays(n=20, k=2)
    images.setflags(write=False)
    info = DatasetInfo("x", 3, 8, 2, (0.5,) * 3, (0.25,) * 3, ("a", "b"), 32)
    real = RealData(ArrayDataset(info, images, labels, images[:2], labels[:2]), "cpu")
    assert real.class_indices.tolist() == [list(range(0, 20, 2)), list(range(1, 20, 2))]
    assert torch.equal(real.std, torch.full((1, 3, 1, 1), 0.25))


# ----------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------

def _tar_gz(members: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _fake_cifar10_archive(tmp_path) -> bytes:
    src = tmp_path / "src"
    write_tiny_cifar10(src)
    return _tar_gz({f"cifar-10-batches-py/{f}": (src / "cifar-10-batches-py" / f).read_bytes()
                    for f in CIFAR_FILES})


def _serve(monkeypatch, payload: bytes, seen: list):
    def fake_urlopen(url, timeout):
        seen.append((url, timeout))
        return io.BytesIO(payload)
    monkeypatch.setattr(download, "_urlopen", fake_urlopen)


def test_download_cifar10(tmp_path, monkeypatch, partial):
    archive = _fake_cifar10_archive(tmp_path)
    url = download._CIFAR_ARCHIVES["cifar10"][0]
    monkeypatch.setitem(download._MD5, url, hashlib.md5(archive).hexdigest())
    seen = []
    _serve(monkeypatch, archive, seen)
    root = tmp_path / "data"
    ds = load_dataset("cifar10", root, download=True)
    assert seen == [(url, 30.0)]
    assert ds.train_images.shape == (100, 3, 32, 32) and ds.info.class_names[3] == "class3"
    assert sorted(p.name for p in (root / "cifar-10-batches-py").iterdir()) == sorted(CIFAR_FILES)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # no .part, archive or temp


def test_download_mnist_files(tmp_path, monkeypatch, partial):
    src = tmp_path / "src"
    write_tiny_mnist(src)
    payloads = {download._MNIST_MIRROR + f"{s}.gz": (src / f"{s}.gz").read_bytes() for s in MNIST_STEMS}
    for url, payload in payloads.items():
        monkeypatch.setitem(download._MD5, url, hashlib.md5(payload).hexdigest())
    monkeypatch.setattr(download, "_urlopen", lambda url, timeout: io.BytesIO(payloads[url]))
    ds = load_dataset("mnist", tmp_path / "data")
    assert ds.train_images.shape == (20, 1, 28, 28)
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(f"{s}.gz" for s in MNIST_STEMS)


def test_download_md5_mismatch(tmp_path, monkeypatch):
    archive = _fake_cifar10_archive(tmp_path)
    _serve(monkeypatch, archive, [])
    root = tmp_path / "data"
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", root)
    msg = str(exc.value)
    assert download._CIFAR_ARCHIVES["cifar10"][0] in msg
    assert "c58f30108f718f92721af3b95e74349a" in msg and hashlib.md5(archive).hexdigest() in msg
    assert list(root.iterdir()) == []


def test_download_network_error(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(download, "_urlopen", offline)
    with pytest.raises(DataError) as exc:
        load_dataset("svhn", tmp_path)
    msg = str(exc.value)
    assert str(tmp_path / "svhn" / "train_32x32.mat") in msg and str(tmp_path / "svhn" / "test_32x32.mat") in msg
    assert "http://ufldl.stanford.edu/housenumbers/train_32x32.mat" in msg and "no network" in msg
    assert not any((tmp_path / "svhn").glob("*.part"))


def test_download_rejects_unsafe_tar(tmp_path, monkeypatch):
    archive = _tar_gz({"../evil": b"x", "cifar-10-batches-py/data_batch_1": b"y"})
    url = download._CIFAR_ARCHIVES["cifar10"][0]
    monkeypatch.setitem(download._MD5, url, hashlib.md5(archive).hexdigest())
    _serve(monkeypatch, archive, [])
    root = tmp_path / "data"
    with pytest.raises(DataError, match="unsafe path '../evil'"):
        load_dataset("cifar10", root)
    assert not (tmp_path / "evil").exists() and list(root.iterdir()) == []
