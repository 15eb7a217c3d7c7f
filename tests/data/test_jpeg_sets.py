"""The JPEG sets (udd_fast.data.imagenet, udd_fast.data.image_cache): Tiny-ImageNet and ImageNet subsets in
their official layouts, written small from real CIFAR-10 images (helpers.write_tiny_imagenet/write_imagenet),
IDC's preprocessing, the disk cache (keyed, reused, never half-built, bounded memory) and their names."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from helpers import IMAGENET_SIZES, REPO, write_imagenet, write_tiny_imagenet
from idc_code import idc_source, require_idc_src
from udd_fast.data import DataError, DataSource, load_dataset
from udd_fast.data import image_cache
from udd_fast.data.image_cache import cache_root, decode_image, resize_center_crop
from udd_fast.data.imagenet import IDC_CLASSES_100, IDC_SUBSETS, read_class_list


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An image cache of the test's own."""
    monkeypatch.setenv("UDD_FAST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "images"


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory, cifar_arrays):
    """Tiny-ImageNet (3 classes) and ImageNet (IDC's ImageNet-10 classes) layouts of real images."""
    root = tmp_path_factory.mktemp("jpegsets")
    wnids = write_tiny_imagenet(root, cifar_arrays)
    write_imagenet(root, cifar_arrays, IDC_SUBSETS["imagenet10"], per_class=4, per_class_val=2)
    return root, wnids


# ----------------------------------------------------------------------------
# IDC's preprocessing: torchvision's Resize(S) then CenterCrop(S)
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("w,h,size,resized,box", [
    (500, 375, 224, (298, 224), (37, 0)),  # 224 * 500 / 375 = 298.67 -> 298; left round(74 / 2) = 37
    (375, 500, 224, (224, 298), (0, 37)),
    (100, 50, 32, (64, 32), (16, 0)),
    (333, 500, 128, (128, 192), (0, 32)),  # int(128 * 500 / 333) = 192
    (64, 64, 64, None, (0, 0)),  # already the size: not resampled
    (65, 64, 64, None, (0, 0)),  # short side already 64: round(0.5) = 0 (Python rounds half to even)
    (67, 64, 64, None, (2, 0)),  # round(1.5) = 2
])
def test_resize_center_crop_is_torchvisions_geometry(w, h, size, resized, box):
    """Sizes and offsets computed by hand from torchvision's rules; the pixels are PIL's bilinear resize
    of the whole image, then the crop."""
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    out = resize_center_crop(im, size)
    assert out.size == (size, size)
    src = im.resize(resized, Image.BILINEAR) if resized else im
    left, top = box
    assert np.array_equal(np.asarray(out), np.asarray(src)[top:top + size, left:left + size])


def test_decode_image_converts_to_rgb_and_names_a_bad_file(tmp_path):
    gray = tmp_path / "g.JPEG"
    Image.fromarray(np.full((40, 60), 77, np.uint8)).save(gray)
    out = decode_image(gray, 32)
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8 and np.ptp(out.astype(int) - 77) <= 2
    bad = tmp_path / "bad.JPEG"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="bad.JPEG: unreadable image"):
        decode_image(bad, 32)


# ----------------------------------------------------------------------------
# Tiny-ImageNet
# ----------------------------------------------------------------------------

def test_tiny_imagenet_layout(jpeg_root, cache):
    root, wnids = jpeg_root
    ds = load_dataset("tinyimagenet", root, download=False)
    info = ds.info
    assert info.name == "tinyimagenet" and info.size == 64 and info.channels == 3 and info.num_classes == 3
    assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)
    classes = sorted(wnids)  # ImageFolder's order, not wnids.txt's
    assert classes != wnids
    assert info.class_names == tuple(f"cifar class {wnids.index(w)}, thing" for w in classes)
    assert ds.train_images.shape == (36, 3, 64, 64) and ds.test_images.shape == (12, 3, 64, 64)
    assert isinstance(ds.train_images, np.memmap) and not ds.train_images.flags.writeable
    assert np.array_equal(np.bincount(ds.train_labels), [12, 12, 12])
    base = root / "tiny-imagenet-200"
    # train: classes in sorted order, files sorted; each image is the file decoded
    first = base / "train" / classes[0] / "images" / f"{classes[0]}_0.JPEG"
    assert np.array_equal(ds.train_images[0], decode_image(first, 64))
    # val: labelled by val_annotations.txt (written in reverse), sorted by file name
    ann = dict(line.split("\t")[:2] for line in (base / "val" / "val_annotations.txt").read_text().split("\n") if line)
    names = sorted(ann)
    assert ds.test_labels.tolist() == [classes.index(ann[n]) for n in names]
    assert np.array_equal(ds.test_images[5], decode_image(base / "val" / "images" / names[5], 64))


def test_the_cache_is_reused_and_keyed_by_the_files(jpeg_root, cache, monkeypatch, tmp_path):
    root, _ = jpeg_root
    a = load_dataset("tinyimagenet", root, download=False)
    assert len(list(cache.iterdir())) == 1
    calls = []
    real = image_cache.decode_image
    monkeypatch.setattr(image_cache, "decode_image", lambda p, s: calls.append(p) or real(p, s))
    b = load_dataset("tinyimagenet", root, download=False)  # memory-mapped from the cache: nothing decoded
    assert calls == [] and np.array_equal(a.train_images, b.train_images)
    c = load_dataset("tinyimagenet@32", root, download=False)  # another side: another cache
    assert len(calls) == 48 and c.train_images.shape == (36, 3, 32, 32) and len(list(cache.iterdir())) == 2
    # a changed file is another key: decoded again
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(root / "tiny-imagenet-200", copy / "tiny-imagenet-200")
    f = sorted((copy / "tiny-imagenet-200" / "val" / "images").iterdir())[0]
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(f)
    calls.clear()
    d = load_dataset("tinyimagenet", copy, download=False)
    assert len(calls) == 48 and len(list(cache.iterdir())) == 3
    assert not np.array_equal(d.test_images, a.test_images) and np.array_equal(d.train_images, a.train_images)


def test_an_interrupted_decode_leaves_no_cache(jpeg_root, cache, monkeypatch):
    root, _ = jpeg_root
    real, seen = image_cache.decode_image, []

    def stop_at_20(p, s):
        seen.append(p)
        if len(seen) == 20:
            raise KeyboardInterrupt
        return real(p, s)

    monkeypatch.setattr(image_cache, "CHUNK_BYTES", 8 * 3 * 64 * 64)
    monkeypatch.setattr(image_cache, "decode_image", stop_at_20)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("tinyimagenet", root, download=False)
    assert list(cache.iterdir()) == []  # neither a cache nor its partial directory
    monkeypatch.setattr(image_cache, "decode_image", real)
    ds = load_dataset("tinyimagenet", root, download=False)
    assert ds.train_images.shape[0] == 36 and len(list(cache.iterdir())) == 1


def test_a_killed_builds_partial_directory_is_never_read_and_is_removed(jpeg_root, cache):
    root, _ = jpeg_root
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    cache.mkdir(parents=True)
    ds = load_dataset("tinyimagenet", root, download=False)
    final = next(cache.iterdir())
    import shutil
    shutil.rmtree(final)
    orphan = cache / f"{final.name}.partial-{int(dead.stdout)}"
    orphan.mkdir()
    (orphan / "meta.json").write_text("{}")  # looks finished, but is not in place
    again = load_dataset("tinyimagenet", root, download=False)
    assert not orphan.exists() and np.array_equal(again.train_images, ds.train_images)


def test_a_damaged_cache_is_named(jpeg_root, cache):
    root, _ = jpeg_root
    load_dataset("tinyimagenet", root, download=False)
    final = next(cache.iterdir())
    with open(final / "train_images.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataError, match=f"{final}: a damaged image cache.*delete that directory"):
        load_dataset("tinyimagenet", root, download=False)


@pytest.mark.parametrize("damage,message", [
    ("no_wnids", "wnids.txt not found.*not downloaded.*tiny-imagenet-200.zip"),
    ("bad_annotation", "val_annotations.txt, line 1: expected"),
    ("empty_class", "no training images of class"),
])
def test_tiny_imagenet_problems_are_named(jpeg_root, cache, tmp_path, damage, message):
    import shutil
    root, wnids = jpeg_root
    copy = tmp_path / "d"
    shutil.copytree(root / "tiny-imagenet-200", copy / "tiny-imagenet-200")
    base = copy / "tiny-imagenet-200"
    if damage == "no_wnids":
        (base / "wnids.txt").unlink()
    elif damage == "bad_annotation":
        (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn00000000\n")
    else:
        shutil.rmtree(base / "train" / wnids[1] / "images")
    with pytest.raises(DataError, match=message):
        load_dataset("tinyimagenet", copy, download=False)
    assert not cache.exists() or list(cache.iterdir()) == []


# ----------------------------------------------------------------------------
# ImageNet subsets
# ----------------------------------------------------------------------------

def test_imagenet10_is_idcs_selection_in_its_order(jpeg_root, cache):
    root, _ = jpeg_root
    ds = load_dataset("imagenet10@64", root, download=False)
    assert ds.info.name == "imagenet10@64" and ds.info.size == 64 and ds.info.num_classes == 10
    assert ds.info.class_names == tuple(IDC_CLASSES_100[:10])
    assert ds.train_labels.tolist() == [c for c in range(10) for _ in range(4)]
    assert ds.test_images.shape == (20, 3, 64, 64)
    w = IDC_CLASSES_100[3]
    f = root / "imagenet" / "train" / w / f"{w}_1.JPEG"
    assert Image.open(f).size == IMAGENET_SIZES[4]  # a portrait photo, resized and centre-cropped
    assert np.array_equal(ds.train_images[13], decode_image(f, 64))


def test_imagenet_by_a_class_list(jpeg_root, cache, tmp_path):
    root, _ = jpeg_root
    chosen = [IDC_CLASSES_100[7], IDC_CLASSES_100[2], IDC_CLASSES_100[5]]
    lst = tmp_path / "classes.txt"
    lst.write_text(f"# three classes\n{chosen[0]}\n\n{chosen[1]}  # a comment\n{chosen[2]}\n")
    src = DataSource.parse("imagenet").with_options(size=48, classes=lst)
    assert str(src) == f"imagenet:{lst}@48" and DataSource.parse(str(src)) == src
    ds = load_dataset(src, root, download=False)
    assert ds.info.class_names == tuple(chosen) and ds.info.size == 48
    f = root / "imagenet" / "val" / chosen[0] / f"{chosen[0]}_0.JPEG"
    assert np.array_equal(ds.test_images[0], decode_image(f, 48))
    lst.write_text(f"{chosen[0]}\nn01234567\n")
    with pytest.raises(DataError, match="n01234567: no images of class n01234567"):
        load_dataset(src, root, download=False)


def test_a_missing_imagenet_names_its_layout(tmp_path, cache):
    with pytest.raises(DataError, match=r"ImageNet-100: .*imagenet/train not found.*not downloaded.*"
                                        r"imagenet/train/<wnid>/\*\.JPEG"):
        load_dataset("imagenet100", tmp_path, download=False)


@pytest.mark.parametrize("text,problem", [
    ("n01440764\nn01440764\n", "listed twice"), ("n01440764\n", "1 classes listed"),
    ("n01440764\n../x\n", "not a class folder name")])
def test_bad_class_lists(tmp_path, text, problem):
    f = tmp_path / "c.txt"
    f.write_text(text)
    with pytest.raises(DataError, match=problem):
        read_class_list(f)


@pytest.mark.idc
def test_idc_class_selection_is_idcs_file():
    from pathlib import Path
    listed = idc_source(Path(require_idc_src()), "misc/class100.txt").split()
    assert list(IDC_CLASSES_100) == listed and list(IDC_SUBSETS["imagenet10"]) == listed[:10]


# ----------------------------------------------------------------------------
# Names: the spelling stored with runs, and the flags' checks
# ----------------------------------------------------------------------------

def test_jpeg_set_spellings():
    assert str(DataSource.parse("tiny-imagenet")) == "tinyimagenet"
    assert DataSource.parse("imagenet10@224") == DataSource.parse("imagenet10")  # the default side is no option
    src = DataSource.parse("ImageNet-100").with_options(size=128)
    assert str(src) == "imagenet100@128" and DataSource.parse(str(src)) == src and src.stem == "imagenet100-128"
    with pytest.raises(DataError, match="--size applies to the JPEG sets"):
        DataSource.parse("mnist").with_options(size=64)
    with pytest.raises(DataError, match=r"--size 8: must be in \[16, 512\]"):
        DataSource.parse("tinyimagenet").with_options(size=8)
    with pytest.raises(DataError, match="--classes lists ImageNet classes for --dataset imagenet"):
        DataSource.parse("imagenet10").with_options(classes="x.txt")
    with pytest.raises(DataError, match="needs --classes FILE"):
        load_dataset("imagenet", download=False)


def test_where_the_training_images_live(jpeg_root, cache, monkeypatch):
    import torch
    from udd_fast.data import RealData, real_data
    root, _ = jpeg_root
    ds = load_dataset("tinyimagenet", root, download=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert real_data.placement(ds.train_images, cpu, "auto") == "on"  # small: copied
    assert real_data.placement(ds.train_images, cpu, "off") == "off"
    assert real_data.placement(np.asarray(ds.train_images).copy(), cpu, "auto") == "on"
    monkeypatch.setattr(real_data, "_host_memory", lambda: 4 * ds.train_images.nbytes - 4)  # a quarter is too little
    assert real_data.placement(ds.train_images, cpu, "auto") == "off"
    assert real_data.placement(np.asarray(ds.train_images).copy(), cpu, "auto") == "on"  # in memory already
    # CUDA: on where a quarter of the card holds them, whether memory-mapped or not
    for card, where in ((4 * ds.train_images.nbytes, "on"), (4 * ds.train_images.nbytes - 4, "off")):
        monkeypatch.setattr(real_data, "_device_memory", lambda device, card=card: card)
        assert real_data.placement(ds.train_images, cuda, "auto") == where
        assert real_data.placement(np.asarray(ds.train_images).copy(), cuda, "auto") == where
        assert real_data.placement(ds.train_images, cuda, "on") == "on"
        assert real_data.placement(ds.train_images, cuda, "off") == "off"
    mapped = RealData(ds, "cpu", "off")
    assert mapped.placement == "off" and np.shares_memory(mapped.images.numpy(), ds.train_images)
    copied = RealData(ds, "cpu", "on")
    assert torch.equal(mapped.images, copied.images) and not np.shares_memory(copied.images.numpy(), ds.train_images)
    assert torch.equal(mapped.to_float(torch.tensor([3, 30])), copied.to_float(torch.tensor([3, 30])))


# ----------------------------------------------------------------------------
# Memory: a set bigger than the bound is read within it
# ----------------------------------------------------------------------------

@pytest.mark.integration
def test_decoding_a_set_bigger_than_the_bound_stays_within_it(tmp_path, cifar_arrays):
    """800 photos at 224 px decode to 120 MB of uint8; the reading process's resident memory may grow by
    40 MB at most (its peak, reset after the imports)."""
    status = "/proc/self/clear_refs"
    if not os.path.exists(status) or not os.access(status, os.W_OK):
        pytest.skip("resetting the peak resident memory needs a writable /proc/self/clear_refs (Linux)")
    wnids = [f"n{c:08d}" for c in range(20)]
    write_imagenet(tmp_path / "data", cifar_arrays, wnids, per_class=40, per_class_val=1)
    (tmp_path / "classes.txt").write_text("\n".join(wnids))
    script = textwrap.dedent(f"""
        import json, re
        from udd_fast.data import DataSource, load_dataset
        def hwm():
            return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
        src = DataSource.parse("imagenet").with_options(classes={str(tmp_path / 'classes.txt')!r})
        open("/proc/self/clear_refs", "w").write("5")  # the peak is now the current resident set
        base = hwm()
        ds = load_dataset(src, {str(tmp_path / 'data')!r}, download=False)
        print(json.dumps(dict(grew=hwm() - base, nbytes=int(ds.train_images.nbytes + ds.test_images.nbytes),
                              mean=float(ds.train_images[-1].mean()))))
    """)
    env = dict(os.environ, UDD_FAST_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO.parent,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["nbytes"] == 820 * 3 * 224 * 224
    print(got)
    assert got["grew"] < 40e6, got
    assert got["mean"] > 0  # the last image was decoded and written


def test_the_fingerprint_hashes_slices_as_the_whole(monkeypatch):
    """Memory-mapped images are hashed a slice at a time (never copied whole): the digest of their bytes at once."""
    import hashlib
    import types

    import torch
    from udd_fast.data import identity
    g = torch.Generator().manual_seed(0)
    data = types.SimpleNamespace(images=torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8, generator=g),
                                 labels=torch.arange(100))
    whole = hashlib.sha256(data.images.numpy().tobytes() + data.labels.numpy().tobytes()).hexdigest()[:32]
    for rows in (1, 7, 100, 1000):
        monkeypatch.setattr(identity, "CHUNK_ROWS_BYTES", rows * 3 * 8 * 8)
        assert identity.data_fingerprint(data) == whole
