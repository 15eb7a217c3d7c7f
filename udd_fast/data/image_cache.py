"""JPEG sets decoded once into a uint8 cache on disk, then memory-mapped (Tiny-ImageNet, ImageNet subsets).

    $UDD_FAST_CACHE/images/<key>/            (else ~/.cache/udd_fast/images/<key>/)
        meta.json                            what the cache holds (written last: no meta, no cache)
        train_images.npy, train_labels.npy   uint8 [N, 3, S, S], int64 [N]
        test_images.npy,  test_labels.npy

The key is a sha256 of what was decoded and how: every file's path under the data root, its size and
modification time, its label, the class list and the image side. A changed, added or removed file is
another key, so a stale cache is never read. Hashing content instead would read ImageNet's 140 GB of
JPEGs at every start.

A cache is built in a directory of its own (`<key>.partial-<pid>`), renamed into place once complete:
an interrupted decode (Ctrl-C, a full disk, a killed process) leaves no cache that a later run could
read, and a later build removes the partial directories whose process is gone. Images are written with
plain file writes in chunks of CHUNK_BYTES, so the decoding process holds one chunk in memory whatever the set's size
(a memory-mapped output would count every written page as resident).

Preprocessing is IDC's (its data.py `transform_imagenet(size)` before ToTensor): the file opened as RGB,
its shorter side resized to S with bilinear filtering, then the S x S centre cut out, both as
torchvision's Resize(S) and CenterCrop(S) compute them on a PIL image.
"""
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..logs import bar
from .dataset import DataError

CACHE_VERSION = 1
ENV_CACHE = "UDD_FAST_CACHE"
CHUNK_BYTES = 16 << 20  # decoded images written per step: what the decoding process holds at once
SPLITS = ("train", "test")


def cache_dir(kind: str) -> Path:
    """Where udd_fast keeps what it computed once (kind: images, proxy, reference): $UDD_FAST_CACHE/<kind>,
    else ~/.cache/udd_fast/<kind>."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "udd_fast").expanduser() / kind


def cache_root() -> Path:
    """$UDD_FAST_CACHE/images, else ~/.cache/udd_fast/images."""
    return cache_dir("images")


def resize_center_crop(im, size: int):
    """torchvision's Resize(size) then CenterCrop(size) on a PIL image, as IDC preprocesses ImageNet: the
    shorter side to `size` (the longer one int(size * long / short)), bilinear; then the centre, its
    offsets rounded as Python's round does."""
    from PIL import Image

    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), Image.BILINEAR)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return im.crop((left, top, left + size, top + size))


def decode_image(path: Path, size: int) -> np.ndarray:
    """One file as uint8 [3, size, size] (IDC's loader: PIL, converted to RGB)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            out = np.asarray(resize_center_crop(im.convert("RGB"), size))
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError...
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc}); replace or remove it") from exc
    return out.transpose(2, 0, 1)


def cache_key(root: Path, splits: dict, classes, size: int) -> str:
    """sha256 over how the cache is made and what it is made of (see the module docstring)."""
    h = hashlib.sha256(json.dumps(dict(version=CACHE_VERSION, size=size, classes=list(classes))).encode())
    for split in SPLITS:
        files, labels = splits[split]
        h.update(f"[{split}]".encode())
        for f, label in zip(files, labels.tolist()):
            st = f.stat()
            h.update(f"{f.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
    return h.hexdigest()[:32]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_orphans(base: Path):
    """Partial caches whose building process is gone (killed: it could not clean up)."""
    for d in base.glob("*.partial-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _write_split(path: Path, files: list, size: int, pool, progress) -> None:
    """uint8 [len(files), 3, size, size] as an .npy file, decoded and written CHUNK_BYTES at a time."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                 "shape": (len(files), 3, size, size)})
        step = max(1, CHUNK_BYTES // (3 * size * size))
        buf = np.empty((step, 3, size, size), dtype=np.uint8)  # one chunk, reused
        for start in range(0, len(files), step):
            chunk = files[start:start + step]
            for i, img in enumerate(pool.map(lambda p: decode_image(p, size), chunk)):
                buf[i] = img
            f.write(memoryview(buf[:len(chunk)]))
            progress.update(len(chunk))


def build_cache(final: Path, splits: dict, meta: dict, size: int, progress: bool) -> None:
    """Decode every split into `final` (absent on entry): built aside, renamed into place when complete."""
    base = final.parent
    base.mkdir(parents=True, exist_ok=True)
    _remove_orphans(base)
    tmp = base / f"{final.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    total = sum(len(splits[s][0]) for s in SPLITS)
    try:
        with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool, \
                bar(total, f"decoding {meta['name']} at {size} px (once; cached in {final})", progress,
                    unit="img") as pb:
            for split in SPLITS:
                files, labels = splits[split]
                _write_split(tmp / f"{split}_images.npy", files, size, pool, pb)
                np.save(tmp / f"{split}_labels.npy", labels.astype(np.int64))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "meta.json").is_file():  # not another process's complete cache: a real failure
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same cache first
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot write the image cache in {base} ({type(exc).__name__}: {exc}); free space there or "
                        f"point ${ENV_CACHE} at a disk with room") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # Ctrl-C, a bad image: no half-built cache is left to read
        raise


def read_cache(final: Path, meta: dict) -> dict:
    """The cached arrays: images memory-mapped (read-only), labels in memory. Raises DataError for a cache
    that does not hold what its meta.json says."""
    try:
        saved = json.loads((final / "meta.json").read_text())
        if {k: v for k, v in saved.items() if k != "name"} != {k: v for k, v in meta.items() if k != "name"}:
            raise ValueError(f"meta.json describes {saved.get('name')!r} at {saved.get('size')} px, not this set")
        out = {}
        for split in SPLITS:
            images = np.load(final / f"{split}_images.npy", mmap_mode="r")
            labels = np.load(final / f"{split}_labels.npy", allow_pickle=False)
            want = (meta["counts"][split], 3, meta["size"], meta["size"])
            if images.dtype != np.uint8 or images.shape != want or labels.shape != (want[0],):
                raise ValueError(f"{split} holds {images.dtype} {images.shape}, expected uint8 {want}")
            out[split] = (images, labels)
        return out
    except (OSError, ValueError) as exc:
        raise DataError(f"{final}: a damaged image cache ({type(exc).__name__}: {exc}); delete that directory "
                        f"and it is decoded again") from exc


def cached_splits(root: Path, splits: dict, classes, size: int, name: str, progress: bool = True) -> dict:
    """{'train': (images, labels), 'test': (...)} of the files in `splits` ({split: (paths under root, int64
    labels)}), decoded at `size` on the first call and memory-mapped from the cache after."""
    key = cache_key(root, splits, classes, size)
    final = cache_root() / key
    meta = dict(version=CACHE_VERSION, name=name, size=size, classes=list(classes),
                counts={s: len(splits[s][0]) for s in SPLITS})
    if not (final / "meta.json").is_file():
        build_cache(final, splits, meta, size, progress)
    return read_cache(final, meta)
